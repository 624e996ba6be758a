"""Converters from other implementations' checkpoints, and the published weights they cover."""
from .effdet import convert_effdet_checkpoint, convert_effdet_state_dict, is_effdet_state_dict
from .effdet_weights import EFFDET_WEIGHTS, load_remote_checkpoint, resolve_effdet_weights
from .efficientnet_pytorch import convert_efficientnet_pytorch_file, convert_efficientnet_pytorch_state_dict

__all__ = [
    "EFFDET_WEIGHTS", "convert_effdet_checkpoint", "convert_effdet_state_dict",
    "convert_efficientnet_pytorch_file", "convert_efficientnet_pytorch_state_dict", "is_effdet_state_dict",
    "load_remote_checkpoint", "resolve_effdet_weights",
]  # fmt: skip
