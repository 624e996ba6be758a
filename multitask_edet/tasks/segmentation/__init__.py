"""Semantic segmentation on BiFPN P2 (paper §5.2): loss, inference at original size, mIoU."""
from .config import SEG_LOSSES, SegEvalConfig, SegLossConfig, SegmentationConfig
from .evaluator import SegmentationEvaluator
from .inference import scores_to_masks
from .loss import SegmentationLoss
from .palette import save_confusion_matrix_image, save_palette_png, voc_palette
from .paper_metrics import PAPER_PROTOCOLS, PaperSegMetrics
from .task import SegmentationTask

__all__ = [
    "PAPER_PROTOCOLS",
    "PaperSegMetrics",
    "SEG_LOSSES",
    "SegEvalConfig",
    "SegLossConfig",
    "SegmentationConfig",
    "SegmentationEvaluator",
    "SegmentationLoss",
    "SegmentationTask",
    "save_confusion_matrix_image",
    "save_palette_png",
    "scores_to_masks",
    "voc_palette",
]
