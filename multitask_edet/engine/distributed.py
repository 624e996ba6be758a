"""Multi-process training with PyTorch's own engine (torchrun + DDP).

``torchrun --nproc_per_node=N -m multitask_edet train ...`` sets RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR; :func:`init_distributed` reads them (NCCL on GPUs, gloo on CPU).
Without them everything here degrades to one process. Only rank 0 writes files.

Samplers: :class:`ResumableSampler` is ``DistributedSampler`` semantics (shuffle per epoch
from ``seed + epoch``, pad to a multiple of the world size, rank ``r`` takes every N-th
index) plus a start offset, so a run resumed mid-epoch skips exactly the samples it already
consumed. :class:`ShardSampler` shards evaluation without padding, so no image is counted
twice; the evaluators' ``sync`` merges the shards.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """What torchrun announced in the environment (one process when nothing is set)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def resolve_device(requested: str, info: DistInfo) -> torch.device:
    """``auto`` → this process's GPU (``cuda:LOCAL_RANK``) when there is one, else the CPU."""
    from ..errors import ConfigError

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {requested!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {requested!r}: only CPU and CUDA devices are supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no GPU is visible; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {requested!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        if device.index is None:
            device = torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device, info: DistInfo | None = None) -> DistInfo:
    """Join the process group torchrun prepared (no-op for a single process)."""
    info = info or env_dist_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            rank=info.rank,
            world_size=info.world_size,
            timeout=datetime.timedelta(minutes=int(os.environ.get("MTEDET_DIST_TIMEOUT_MIN", 30))),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    return info


def shutdown_distributed(wait_for_all: bool = True) -> None:
    """Leave the process group. ``wait_for_all``: first meet every rank at a barrier, so that no
    rank tears its connections down while another still uses them (gloo then aborts at exit).
    Skip the barrier after an error: the other ranks may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_module_state(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``module``.

    DDP keeps parameters equal, but each rank's BatchNorm running statistics (and so an EMA
    of them) follow its own batches between DDP's per-forward buffer broadcasts, and plain
    BN (CPU runs: no SyncBN) never merges them. Evaluation and checkpoints use rank 0's.
    """
    if world_size() == 1:
        return
    for t in module.state_dict().values():
        dist.broadcast(t, src=src)


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """SyncBatchNorm under DDP on GPUs (it has no CPU kernel, so CPU runs keep plain BN)."""
    if world_size() > 1 and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap_model(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """DDP-wrap ``model`` when distributed.

    Every task returns losses connected to all of its outputs even when a batch carries none
    of its targets (tasks/base.py), so ``find_unused_parameters`` is not needed by default.
    """
    if world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


class ResumableSampler(Sampler[int]):
    """Per-epoch permutation from ``seed + epoch`` (identical on every rank), padded to a
    multiple of ``num_replicas``, strided by rank; ``set_epoch(epoch, start)`` skips the first
    ``start`` indices of this rank's share (the ones consumed before an interruption)."""

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, num_replicas: int | None = None, rank_: int | None = None):
        if size <= 0:
            raise ValueError("ResumableSampler needs a non-empty dataset")
        self.size = size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = num_replicas if num_replicas is not None else world_size()
        self.rank = rank_ if rank_ is not None else rank()
        self.num_samples = -(-size // self.num_replicas)  # ceil
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = int(epoch)
        self.start = int(start)

    def indices(self) -> list[int]:
        """This rank's full share for the current epoch (before skipping)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.num_samples * self.num_replicas
        while len(order) < total:  # pad by repeating from the front, like DistributedSampler
            order += order[: total - len(order)]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "start": self.start}


class ShardSampler(Sampler[int]):
    """Evaluation shard of rank ``r``: indices ``r, r+N, r+2N, ...`` — no padding, so no
    sample is evaluated twice and the union over ranks is exactly the dataset."""

    def __init__(self, size: int, num_replicas: int | None = None, rank_: int | None = None):
        self.size = size
        self.num_replicas = num_replicas if num_replicas is not None else world_size()
        self.rank = rank_ if rank_ is not None else rank()

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.num_replicas))


class ResumableLoader:
    """A DataLoader per epoch, positioned at any batch of it.

    ``iterate(epoch, start_batch)`` re-seeds the dataset's augmentation for ``epoch``
    (``set_epoch``), positions the sampler, and yields the remaining batches. The loader's
    own generator is seeded from (seed, epoch), so creating it never draws from the global
    RNG — a resumed run's global RNG stream stays identical to an uninterrupted one's.

    ``batch_sampler``: a sampler of index lists with ``set_epoch``/``set_start`` (e.g.
    datasets.mixed.MixedBatchSampler); otherwise batches of ``batch_size`` are drawn from a
    :class:`ResumableSampler`.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        collate_fn,
        seed: int = 0,
        workers: int = 0,
        shuffle: bool = True,
        batch_sampler=None,
        pin_memory: bool = False,
    ):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.collate_fn = collate_fn
        self.seed = int(seed)
        self.workers = int(workers)
        self.pin_memory = pin_memory
        self.batch_sampler = batch_sampler
        self.sampler = None
        if batch_sampler is None:
            self.sampler = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed)
            # keep full batches (BatchNorm statistics) unless the shard is smaller than one batch
            self.drop_last = self.sampler.num_samples >= self.batch_size
            n = self.sampler.num_samples
            self._batches = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        else:
            self._batches = len(batch_sampler) + getattr(batch_sampler, "start", 0)

    def __len__(self) -> int:
        """Batches per epoch on this rank (equal on every rank)."""
        return self._batches

    def _set_dataset_epoch(self, epoch: int) -> None:
        for ds in getattr(self.dataset, "sources", None) or [self.dataset]:
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def iterate(self, epoch: int, start_batch: int = 0):
        from torch.utils.data import BatchSampler, DataLoader

        self._set_dataset_epoch(epoch)
        if self.batch_sampler is not None:
            self.batch_sampler.set_epoch(epoch)
            self.batch_sampler.set_start(start_batch)
            batches = self.batch_sampler
        else:
            self.sampler.set_epoch(epoch, start=start_batch * self.batch_size)
            batches = BatchSampler(self.sampler, self.batch_size, drop_last=self.drop_last)
        g = torch.Generator()
        g.manual_seed(self.seed * 1000003 + epoch)
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            collate_fn=self.collate_fn,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            generator=g,
            persistent_workers=False,
        )
        return iter(loader)
