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
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..errors import CheckpointError, NonFiniteError
from ..filesystem import write_error_from
from ..torch_io import load_weights_only
from .distributed import all_gather_object, is_main_process, unwrap, world_size
from .step_guard import all_finite

log = logging.getLogger(__name__)

FORMAT = "mtedet-checkpoint"
FORMAT_VERSION = 1


#: the temporary names ``atomic_write`` uses: ``.<name>.<8 random characters>.tmp``
TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the finished file onto ``path`` in one step.

    A failed write (disk full, quota, read-only) raises the ``OSError`` with ``path`` as its
    file name, also when a library wrapped it in its own error type (filesystem.py).
    """
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
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = e if isinstance(e, OSError) and e.errno is not None else write_error_from(e, path)
        if cause is not None and isinstance(e, Exception):
            raise OSError(cause.errno, os.strerror(cause.errno), str(path)) from e
        raise
    return path


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed ``atomic_write`` left in ``folder``; returns them.

    A ``kill -9`` (or power loss) between ``mkstemp`` and ``os.replace`` leaves one behind,
    as large as the checkpoint. Call it only while no other process writes into ``folder``
    (the run folder's lock, engine/run_folder.py, guarantees that).
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.iterdir()):
        if TEMP_FILE.match(p.name) and p.is_file():
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            removed.append(p)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically ``torch.save`` a checkpoint dict (tensors and plain containers only)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}

    def write(tmp: str) -> None:
        # through a Python file object: a failed write then keeps its OSError (errno, e.g. "no
        # space left") as the context of torch's "enforce fail at inline_container.cc"
        with open(tmp, "wb") as f:
            torch.save(payload, f)

    return atomic_write(path, write)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass --checkpoint PATH to a last.pt/best.pt")
    ckpt = load_weights_only(path, map_location, "checkpoint")
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
        if path.stat().st_size == 0:
            raise CheckpointError(f"weights file {path} is empty (0 bytes): its write never finished "
                                  "(a full disk or a killed process); use another copy")
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
            _refuse_nonfinite(path, {"model": payload["model"], "ema": payload.get("ema", {})})
            save_checkpoint(path, payload)
        if name == "last.pt":
            self.last_saved_step = self.trainer.step
        return path

    def save_release(self) -> Path | None:
        if not is_main_process():
            return None
        meta = {"config": self.config, "class_names": self.class_names, "model_config": self.model_config,
                "step": self.trainer.step}
        path = self.run_dir / "model.safetensors"
        state = self.release_state_dict()
        _refuse_nonfinite(path, {"weights": state})
        return save_safetensors(path, state, meta)

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


def _refuse_nonfinite(path: Path, parts: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Never write NaN/inf weights: raise, and the previous file at ``path`` stays as it was."""
    if all_finite(v for sd in parts.values() for v in sd.values() if torch.is_tensor(v)):
        return
    bad = [f"{part}.{k}" for part, sd in parts.items() for k, v in sd.items()
           if torch.is_tensor(v) and v.is_floating_point() and not all_finite([v])]
    if bad:
        raise NonFiniteError(
            f"not writing {path}: {len(bad)} weight tensor(s) hold NaN/inf ({', '.join(bad[:3])}"
            f"{' …' if len(bad) > 3 else ''}); the previous {path.name}, if any, is kept"
        )
