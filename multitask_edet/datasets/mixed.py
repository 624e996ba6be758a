"""Mixed-dataset training: each task learns from its own dataset through one shared trunk.

Detection and segmentation annotations rarely sit on the same images at scale (COCO has
boxes for 118k images, VOC 2012 + SBD has masks for 10k). ``MixedDataset`` puts one source
dataset per task behind one index space, and ``MixedBatchSampler`` draws every batch from a
single source (uniform image shapes, one task's targets per batch) following a fixed ratio:

- the *source schedule* is a smooth weighted round-robin (the nginx algorithm): over any
  stretch of n batches each source gets its share of the ratio to within one batch. It does
  not depend on the rank, so every DDP rank trains the same task at the same step and
  "task absent from this batch" is a global fact (see engine/param_groups.drop_grads);
- within a source, samples follow seeded permutations (a new one each time the source is
  exhausted, so a small source is cycled), split into disjoint per-rank shards the way
  ``DistributedSampler`` does (padded to a multiple of the world size);
- the state is ``(epoch, batch position)``: ``set_epoch`` + ``set_start`` resume mid-epoch
  exactly, since the whole epoch is a pure function of (seed, epoch, rank, world size).

Each source loads only the annotation of its task (the sample key named by the task's
``source``), so a sample from the detection source carries no mask and one from the
segmentation source no boxes: the task whose annotation a batch lacks returns a zero loss
and the trainer drops its head's gradients. Each task keeps its own class set
(``class_names``, by annotation name) and its own evaluation dataset (``task_datasets``).
"""
from __future__ import annotations

import bisect
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import ConfigError, DatasetError


def parse_dataset_spec(spec: str, tasks: Sequence[str]) -> dict[str, str]:
    """``"coco+voc2012"`` with tasks (det, seg) → ``{"det": "coco", "seg": "voc2012"}``.

    Names are given in the order of the tasks; ``"seg=voc2012+det=coco"`` names them
    explicitly. A spec without ``+`` is one dataset for every task.
    """
    parts = [p.strip() for p in spec.split("+")]
    if len(parts) == 1:
        return {t: parts[0] for t in tasks}
    if any("=" in p for p in parts):
        out = {}
        for p in parts:
            if "=" not in p:
                raise ConfigError(f"dataset spec {spec!r}: write every part as task=dataset or none of them")
            t, name = (x.strip() for x in p.split("=", 1))
            out[t] = name
    else:
        if len(parts) != len(tasks):
            raise ConfigError(
                f"dataset spec {spec!r} names {len(parts)} datasets for {len(tasks)} task(s) {list(tasks)}; "
                "give one dataset per task in the order of --task (e.g. --task det,seg --dataset coco+voc2012)"
            )
        out = dict(zip(tasks, parts))
    if sorted(out) != sorted(tasks) or not all(out.values()):
        raise ConfigError(f"dataset spec {spec!r} must name one dataset for each task of {list(tasks)}")
    return out


class MixedDataset(Dataset):
    """One source dataset per task, concatenated; each source loads only its task's annotation."""

    def __init__(self, sources: Mapping[str, Dataset]):
        if len(sources) < 1:
            raise ConfigError("MixedDataset needs at least one source")
        self.tasks = list(sources)
        self.sources = [sources[t] for t in self.tasks]
        for t, ds in zip(self.tasks, self.sources):
            if len(ds) == 0:
                raise DatasetError(f"the {t!r} source of the mixed dataset has no images")
        self.sizes = [len(ds) for ds in self.sources]
        self.offsets = np.cumsum([0] + self.sizes).tolist()

    # --- per-task views ------------------------------------------------------------------
    @property
    def task_datasets(self) -> dict[str, Dataset]:
        return dict(zip(self.tasks, self.sources))

    @property
    def annotations(self) -> dict[str, str]:
        return {a: k for ds in self.sources for a, k in ds.annotations.items()}

    @property
    def class_names(self) -> dict[str, list[str]]:
        return {a: names for ds in self.sources for a, names in ds.class_names.items() if a in ds.annotations}

    # --- indexing ------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a mixed dataset of {len(self)}")
        s = bisect.bisect_right(self.offsets, index) - 1
        return s, index - self.offsets[s]

    def __getitem__(self, index: int) -> dict[str, Any]:
        s, i = self.locate(index)
        return self.sources[s][i]


def interleave_schedule(ratio: Sequence[float], n: int) -> list[int]:
    """Smooth weighted round-robin: ``n`` source indices in proportion to ``ratio``."""
    w = [float(r) for r in ratio]
    total = sum(w)
    current = [0.0] * len(w)
    out = []
    for _ in range(n):
        for s in range(len(w)):
            current[s] += w[s]
        pick = max(range(len(w)), key=lambda s: current[s])  # ties → the first source
        current[pick] -= total
        out.append(pick)
    return out


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of global indices into a ``MixedDataset``, each from one source."""

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        ratio: Sequence[float] | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = True,
        epoch_batches: int | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        ratio = [1.0] * len(sizes) if ratio is None else list(ratio)
        if len(ratio) != len(sizes) or any(not (r >= 0) for r in ratio) or sum(ratio) <= 0:
            raise ConfigError(
                f"data.mix_ratio {ratio} must give one non-negative weight per source ({len(sizes)}), not all zero"
            )
        if any(n <= 0 for n in sizes):
            raise DatasetError(f"every source of a mixed dataset needs images; sizes: {list(sizes)}")
        if rank is None or world_size is None:
            dist = torch.distributed
            on = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if on else 0
            world_size = dist.get_world_size() if on else 1
        self.sizes = [int(n) for n in sizes]
        self.offsets = np.cumsum([0] + self.sizes).tolist()
        self.batch_size = int(batch_size)
        self.ratio = ratio
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle = shuffle
        if epoch_batches is None:
            per_rank = [-(-n // self.world_size) for n in self.sizes]
            epoch_batches = max(1, sum(n // self.batch_size for n in per_rank))
        self.epoch_batches = int(epoch_batches)
        self.epoch = 0
        self.start = 0

    @classmethod
    def for_dataset(cls, dataset: MixedDataset, batch_size: int, ratio: Mapping[str, float] | None = None, **kw):
        """``ratio`` by task name (missing tasks weigh 1)."""
        ratio = dict(ratio or {})
        unknown = sorted(set(ratio) - set(dataset.tasks))
        if unknown:
            raise ConfigError(f"data.mix_ratio names task(s) {unknown} without a source; sources: {dataset.tasks}")
        return cls(dataset.sizes, batch_size, [ratio.get(t, 1.0) for t in dataset.tasks], **kw)

    # --- state ---------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, batch_index: int) -> None:
        """Resume: the next iteration begins at this batch of the current epoch."""
        if not 0 <= batch_index <= self.epoch_batches:
            raise ValueError(f"batch index {batch_index} outside an epoch of {self.epoch_batches} batches")
        self.start = int(batch_index)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "start": self.start}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.set_start(int(state["start"]))

    def __len__(self) -> int:
        return self.epoch_batches - self.start

    # --- the epoch -----------------------------------------------------------------------
    def _stream(self, s: int) -> Iterator[int]:
        """This rank's endless sequence of local indices into source ``s`` for this epoch."""
        n, cycle = self.sizes[s], 0
        while True:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.epoch, s, cycle])
                perm = rng.permutation(n)
            else:
                perm = np.arange(n)
            # pad by repeating the permutation so every rank gets as many (DistributedSampler)
            perm = np.resize(perm, n + (-n) % self.world_size)
            yield from perm[self.rank :: self.world_size].tolist()
            cycle += 1

    def batches(self) -> list[list[int]]:
        """Every batch of the current epoch on this rank (global indices)."""
        schedule = interleave_schedule(self.ratio, self.epoch_batches)
        streams = [self._stream(s) for s in range(len(self.sizes))]
        out = []
        for s in schedule:
            out.append([self.offsets[s] + next(streams[s]) for _ in range(self.batch_size)])
        return out

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.start :]
