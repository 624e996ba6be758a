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
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import CheckpointError
from ..filesystem import write_error_from
from ..torch_io import load_weights_only

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
