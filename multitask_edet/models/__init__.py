"""The network: timm backbone → BiFPN → heads (paper §3–4, §5.2)."""
from .factory import build_model_tasks, create_model, load_checkpoint
from .model import InputSizeError, MultiTaskEfficientDet

__all__ = ["InputSizeError", "MultiTaskEfficientDet", "build_model_tasks", "create_model", "load_checkpoint"]
