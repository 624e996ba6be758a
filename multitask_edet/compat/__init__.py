"""Converters from other implementations' checkpoints."""
from .effdet import convert_effdet_checkpoint, convert_effdet_state_dict, is_effdet_state_dict

__all__ = ["convert_effdet_checkpoint", "convert_effdet_state_dict", "is_effdet_state_dict"]
