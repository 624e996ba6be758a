"""Tasks: what is specific to detection, segmentation or a user's own task (DESIGN.md §3).

Importing this package registers the built-in tasks ("det", "seg") in ``TASKS``.
"""
from .base import TASKS, Evaluator, Task, register_task
from .detection import DetectionTask
from .segmentation import SegmentationTask

__all__ = ["TASKS", "Evaluator", "Task", "register_task", "DetectionTask", "SegmentationTask"]
