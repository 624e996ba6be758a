"""The network: timm backbone → BiFPN → heads (paper §3–4, §5.2)."""
from .factory import create_model, load_checkpoint
from .heads import HEADS, build_head, register_head
from .model import InputSizeError, MultiTaskEfficientDet

__all__ = [
    "HEADS",
    "InputSizeError",
    "MultiTaskEfficientDet",
    "build_head",
    "create_model",
    "load_checkpoint",
    "register_head",
]
