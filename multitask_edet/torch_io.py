"""``torch.load`` with ``weights_only=True`` and one clear error per way a file can be bad.

Used by every loader of ``.pt``/``.pth`` files (training checkpoints in engine/checkpoint.py,
weight files in state_dict.py), so that an empty file, a file carrying pickled code and
a damaged file each get a message that says which of these it is and what to do.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_OPERAND = re.compile(r"Unsupported operand \d+")


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message ("" for an empty message)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0][:limit] if lines else ""


def load_weights_only(path: str | Path, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``; a ``CheckpointError`` names the file and the cause.

    No code stored in the file ever runs: a pickle payload is refused by torch, and said to be
    one here (not "corrupt"), since re-downloading would not help but trusting the source might.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(
            f"{what} {path} is empty (0 bytes): its write never finished (a full disk or a killed process); "
            "use another checkpoint (best.pt, or last.pt of an earlier copy of the run)"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the first class or function a pickle payload would call ("Unsupported
        # global"); random or damaged bytes fail on an opcode instead ("Unsupported operand")
        found = _GLOBAL.search(str(e))
        if found:
            raise CheckpointError(
                f"{what} {path} is not loadable safely: it holds pickled Python objects (first: {found.group(1)}) that "
                "torch.load(weights_only=True) refuses to run, and mtedet never runs code from a weights file. "
                "If you trust its source, load it yourself with torch.load(..., weights_only=False) and save "
                "its tensors again (torch.save(state_dict) or safetensors)"
            ) from None
        raise _unreadable(path, what, e) from None
    except Exception as e:  # noqa: BLE001 — torch raises many types for damaged files
        raise _unreadable(path, what, e) from None


def _unreadable(path: Path, what: str, e: BaseException) -> CheckpointError:
    # torch's long weights-only preamble says nothing about this file; its opcode line does
    operand = _OPERAND.search(str(e))
    detail = f"not a pickle stream ({operand.group(0)})" if operand else first_line(e)
    return CheckpointError(
        f"{what} {path} cannot be read ({type(e).__name__}{': ' + detail if detail else ''}); "
        "it is corrupt, truncated, or not a torch.save file"
    )


__all__ = ["first_line", "load_weights_only"]
