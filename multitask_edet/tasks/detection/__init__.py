"""Object detection: anchors, matching, box coding, focal/Huber loss, NMS, COCO/VOC AP."""
from .anchors import AnchorGenerator, feature_sizes
from .box_coder import BoxCoder
from .config import DetEvalConfig, DetLossConfig, DetPostprocessConfig, DetectionConfig
from .evaluator import DetectionEvaluator
from .labeler import AnchorLabeler, DetTargets, pad_boxes
from .loss import detection_loss, focal_loss
from .matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, IGNORED, NEGATIVE, ArgMaxMatcher
from .postprocess import postprocess_detections, soft_nms
from .task import DetectionTask

__all__ = [
    "AnchorGenerator", "feature_sizes", "BoxCoder", "DetEvalConfig", "DetLossConfig",
    "DetPostprocessConfig", "DetectionConfig", "DetectionEvaluator", "AnchorLabeler", "DetTargets", "pad_boxes",
    "detection_loss", "focal_loss", "BELOW_LOW_THRESHOLD", "BETWEEN_THRESHOLDS", "IGNORED",
    "NEGATIVE", "ArgMaxMatcher", "postprocess_detections", "soft_nms", "DetectionTask",
]
