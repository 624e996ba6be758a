"""multitask_edet: joint detection and semantic segmentation on one EfficientDet trunk.

The public API. Names are resolved lazily so ``import multitask_edet`` stays cheap.
"""
from __future__ import annotations

import os

from .lazy import lazy_attributes

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "create_model": "multitask_edet.models.factory",
    "from_pretrained": "multitask_edet.models.model",
    "list_models": "multitask_edet.config",
    "get_model_config": "multitask_edet.config",
    "ModelConfig": "multitask_edet.config",
    "MultiTaskEfficientDet": "multitask_edet.models.model",
    "register_task": "multitask_edet.tasks",
    "Task": "multitask_edet.tasks",
    "Evaluator": "multitask_edet.tasks",
    "Forward": "multitask_edet.tasks",
    "ExportGeometry": "multitask_edet.tasks",
    "build_task": "multitask_edet.tasks",
    "build_model_tasks": "multitask_edet.models.factory",
    "coco_detector": "multitask_edet.models.factory",
    "register_dataset": "multitask_edet.datasets",
    "register_weighting": "multitask_edet.engine.weighting",
    "model_info": "multitask_edet.models.info",
    "DetectionTask": "multitask_edet.tasks.detection",
    "SegmentationTask": "multitask_edet.tasks.segmentation",
    "build_dataset": "multitask_edet.datasets",
    "Trainer": "multitask_edet.engine.trainer",
    "Experiment": "multitask_edet.experiment",
}

__all__ = sorted(_API) + ["__version__"]
__getattr__, __dir__ = lazy_attributes(__name__, _API, defined=["__version__"])
