"""Checkpoints that survive a kill and load without arbitrary pickle: the file formats
(engine/checkpointer.py gathers a training run's state into them).

A training checkpoint (``last.pt``, ``best.pt``) is one ``torch.save`` of tensors and plain
containers only, so ``torch.load(path, weights_only=True)`` reads it: model, EMA, optimizer,
scheduler and scaler state, progress counters, RNG states and the resolved experiment
config. Release weights go to ``model.safetensors`` with the config in its metadata, next to
``config.json`` and a model card: the run folder is a pretrained folder (multitask_edet/hub.py).

Every file is written to a temporary name in the same folder, flushed to disk and moved
into place with ``os.replace``, so a kill at any moment leaves the previous file intact.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import CheckpointError

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
