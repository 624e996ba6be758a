"""Tasks: what is specific to detection, segmentation or a user's own task (tasks/base.py).

Importing this package registers the built-in task types ("det", "seg") in ``TASKS``.
"""
from .base import TASKS, Evaluator, ExportGeometry, Forward, Task, build_task, register_task, resolve_task_config, task_options
from .detection import DetectionTask
from .segmentation import SegmentationTask

__all__ = [
    "TASKS", "Evaluator", "ExportGeometry", "Forward", "Task", "build_task", "register_task", "resolve_task_config", "task_options",
    "DetectionTask", "SegmentationTask",
]
