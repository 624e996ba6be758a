"""Reading weight files safely, and reporting how a state dict fails to fit a model.

Shared by every loader (backbone weights, our checkpoints, effdet files): ``torch.load`` runs
with ``weights_only=True`` so no code in a file can execute, and wrappers that training
scripts put around the weights are unwrapped.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import CheckpointError
from .torch_io import load_weights_only


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (``weights_only=True``: no code runs).

    Training checkpoints that wrap the weights (``{"state_dict": …}``, ``{"model": …}``) are
    unwrapped, and a DistributedDataParallel ``module.`` prefix is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as e:  # noqa: BLE001 — an empty, truncated or foreign file
            raise CheckpointError(f"cannot read checkpoint {path}: not a readable safetensors file ({e})") from None
    else:
        sd = load_weights_only(path, "cpu", "checkpoint")
    return unwrap_state_dict(sd, path)


def unwrap_state_dict(sd, path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: ``{"state_dict": …}``-style wrappers and a
    DistributedDataParallel ``module.`` prefix removed; anything else is a CheckpointError.

    ``path`` names the file in the error (a local path, or a download's source and cache file).
    """
    for key in ("model", "state_dict", "state_dict_ema", "model_ema"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def key_report(missing, unexpected, limit: int = 20) -> str:
    """'missing: a, b …; unexpected: c' for error messages."""

    def fmt(keys):
        keys = sorted(keys)
        more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {fmt(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {fmt(unexpected)}")
    return "; ".join(parts)
