"""Checkpoints that survive a kill and load without arbitrary pickle: the file formats and the
``Checkpointer`` that gathers a training run's whole state into them and restores it.

A training checkpoint (``last.pt``, ``best.pt``) is one ``torch.save`` of tensors and plain
containers only, so ``torch.load(path, weights_only=True)`` reads it: model, EMA, optimizer,
scheduler and scaler state, progress counters, RNG states and the resolved experiment
config. Release weights go to ``model.safetensors`` with the config in its metadata.

Every file is written to a temporary name in the same folder, flushed to disk and moved
into place with ``os.replace``, so a kill at any moment leaves the previous file intact.
"""
from __future__ import annotations

import json
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..errors import CheckpointError
from .distributed import all_gather_object, is_main_process, unwrap, world_size

log = logging.getLogger(__name__)

FORMAT = "mtedet-checkpoint"
FORMAT_VERSION = 1


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the finished file onto ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically ``torch.save`` a checkpoint dict (tensors and plain containers only)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass --checkpoint PATH to a last.pt/best.pt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 — torch raises many types for corrupt files
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "it is corrupt, truncated, or not a torch.save file"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an mtedet training checkpoint (no 'format: {FORMAT}' entry); "
            "for effdet weights use `mtedet convert-effdet` first"
        )
    return ckpt


def save_safetensors(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Weights only, for release: ``metadata`` (JSON-able) is stored as strings in the header."""
    from safetensors.torch import save_file

    # safetensors refuses tensors that share storage; a contiguous copy of each is what we ship.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, info) from a ``.pt`` training checkpoint or a ``model.safetensors``.

    ``info`` holds ``config`` (the experiment config dict) and ``class_names`` when known.
    A training checkpoint gives its EMA weights when it has them (what evaluation uses).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"weights file {path} does not exist")
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
        info: dict[str, Any] = {}
        for k, v in meta.items():
            try:
                info[k] = json.loads(v)
            except (json.JSONDecodeError, TypeError):
                info[k] = v
        return sd, info
    ckpt = load_checkpoint(path)
    sd = ckpt.get("ema") or ckpt["model"]
    return sd, {k: ckpt.get(k) for k in ("config", "class_names", "model_config", "state")}


# ---- RNG state: converted to tensors/ints/lists so weights_only loading accepts it ----

def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": _to_plain(random.getstate()),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _to_plain(x):
    if isinstance(x, tuple):
        return [_to_plain(v) for v in x]
    return x


def _to_tuple(x):
    if isinstance(x, list):
        return tuple(_to_tuple(v) for v in x)
    return x


# ---------------------------------------------------------------------------- a run's state

class Checkpointer:
    """Gathers the whole training state and writes/reads it (rank 0 writes)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        trainer,
        scheduler=None,
        ema=None,
        config: Mapping[str, Any] | None = None,
        class_names: Mapping[str, list[str]] | None = None,
        model_config: Mapping[str, Any] | None = None,
        extra_state: Mapping[str, Any] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.trainer = trainer
        self.scheduler = scheduler
        self.ema = ema
        self.config = dict(config or {})
        self.class_names = {k: list(v) for k, v in (class_names or {}).items()}
        #: the resolved model config (every task's full options, input normalisation): what
        #: rebuilds the network without the experiment config
        self.model_config = dict(model_config or {})
        #: name → object with state_dict()/load_state_dict() (hooks with state, e.g. best metric)
        self.extra_state = dict(extra_state or {})
        self.last_saved_step = -1

    def release_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights for release/evaluation: the EMA's when EMA is on."""
        src = self.ema.module if self.ema is not None else unwrap(self.trainer.model)
        return src.state_dict()

    def payload(self, gather: bool = True) -> dict[str, Any]:
        t = self.trainer
        # every rank's RNG state, so a resumed multi-process run continues every stream
        rngs = all_gather_object(rng_state()) if gather else [rng_state()]
        out: dict[str, Any] = {
            "config": self.config,
            "class_names": self.class_names,
            "model_config": self.model_config,
            "model": unwrap(t.model).state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "weighting": t.weighting.state_dict(),
            "state": t.progress_state(),
            "sampler": {"seed": t.loader.seed, "epoch": t.epoch, "start_batch": t.iter_in_epoch, "world_size": world_size()},
            "rng": rngs,
            "hooks": {k: v.state_dict() for k, v in self.extra_state.items()},
        }
        if self.ema is not None:
            out["ema"] = self.ema.module.state_dict()
        if self.scheduler is not None:
            out["scheduler"] = self.scheduler.state_dict()
        if t.scaler is not None:
            out["scaler"] = t.scaler.state_dict()
        return out

    def save(self, name: str = "last.pt", gather: bool = True) -> Path | None:
        payload = self.payload(gather)
        path = self.run_dir / name
        if is_main_process():
            save_checkpoint(path, payload)
        if name == "last.pt":
            self.last_saved_step = self.trainer.step
        return path

    def save_release(self) -> Path | None:
        if not is_main_process():
            return None
        meta = {"config": self.config, "class_names": self.class_names, "model_config": self.model_config,
                "step": self.trainer.step}
        return save_safetensors(self.run_dir / "model.safetensors", self.release_state_dict(), meta)

    def resume(self, path: str | Path) -> dict[str, Any]:
        """Restore everything from ``path`` (all ranks read it); returns the checkpoint."""
        ckpt = load_checkpoint(path)
        t = self.trainer
        try:
            unwrap(t.model).load_state_dict(ckpt["model"])
            if self.ema is not None and "ema" in ckpt:
                self.ema.module.load_state_dict(ckpt["ema"])
            t.optimizer.load_state_dict(ckpt["optimizer"])
            if "weighting" in ckpt:
                t.weighting.load_state_dict(ckpt["weighting"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"checkpoint {path} does not fit this run ({str(e).splitlines()[0][:300]}); "
                "resume with the config it was written with (config.yaml of its run folder)"
            ) from None
        if self.scheduler is not None and "scheduler" in ckpt:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if t.scaler is not None and "scaler" in ckpt:
            t.scaler.load_state_dict(ckpt["scaler"])
        t.load_progress_state(ckpt["state"])
        for k, obj in self.extra_state.items():
            if k in ckpt.get("hooks", {}):
                obj.load_state_dict(ckpt["hooks"][k])
        rngs = ckpt.get("rng") or []
        saved_world = ckpt.get("sampler", {}).get("world_size", 1)
        if saved_world != world_size():
            log.warning(
                "checkpoint was written by %d process(es), this run has %d: training continues, "
                "but not sample-for-sample as the interrupted run would have", saved_world, world_size())
        rank = torch.distributed.get_rank() if world_size() > 1 else 0
        if rank < len(rngs):
            set_rng_state(rngs[rank])
        self.last_saved_step = t.step
        return ckpt
