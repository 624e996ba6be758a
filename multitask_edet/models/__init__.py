"""The network: timm backbone → BiFPN → heads (paper §3–4, §5.2).

Names are resolved lazily, so importing a part (``models.layers``, ``models.heads``) — as the
task types do for their heads — does not import the factory, which imports the task types.
"""
from __future__ import annotations

from ..lazy import lazy_attributes

_API = {
    "InputSizeError": "multitask_edet.models.model",
    "MultiTaskEfficientDet": "multitask_edet.models.model",
    "build_model_tasks": "multitask_edet.models.factory",
    "coco_detector": "multitask_edet.models.factory",
    "create_model": "multitask_edet.models.factory",
    "load_checkpoint": "multitask_edet.models.factory",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_attributes(__name__, _API)
