"""Box regression targets relative to anchors (paper §5.1; Faster R-CNN parameterisation).

    ty = (y - ya) / ha    tx = (x - xa) / wa    th = log(h / ha)    tw = log(w / wa)

with centres (x, y) and sizes (w, h) of the box and the anchor (xa, ya, wa, ha). The code
order (ty, tx, th, tw) and the unscaled codes (no 10/10/5/5 factors) are those of the
reference EfficientDet, so its trained box heads decode correctly here. Boxes are xyxy.
"""
from __future__ import annotations

import torch


class BoxCoder:
    def __init__(self, eps: float = 1e-7, max_log_size: float | None = None):
        #: keeps log() finite for degenerate boxes (the reference adds the same epsilon)
        self.eps = eps
        #: optional clamp of th/tw before exp() in decode (None = no clamp, as the reference)
        self.max_log_size = max_log_size

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """xyxy ``boxes`` (..., 4) → codes (..., 4) = (ty, tx, th, tw) w.r.t. ``anchors``."""
        ax0, ay0, ax1, ay1 = anchors.unbind(-1)
        bx0, by0, bx1, by1 = boxes.unbind(-1)
        wa, ha = ax1 - ax0, ay1 - ay0
        w, h = bx1 - bx0, by1 - by0
        # centres as min + size/2 (not (min+max)/2): same rounding as the reference encoder
        xa, ya = ax0 + wa / 2.0, ay0 + ha / 2.0
        x, y = bx0 + w / 2.0, by0 + h / 2.0
        wa, ha, w, h = wa + self.eps, ha + self.eps, w + self.eps, h + self.eps
        ty = (y - ya) / ha
        tx = (x - xa) / wa
        th = torch.log(h / ha)
        tw = torch.log(w / wa)
        return torch.stack([ty, tx, th, tw], dim=-1)

    def decode(self, codes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Codes (..., 4) = (ty, tx, th, tw) → xyxy boxes (..., 4); anchors broadcast."""
        ax0, ay0, ax1, ay1 = anchors.unbind(-1)
        xa, ya = (ax0 + ax1) / 2.0, (ay0 + ay1) / 2.0
        wa, ha = ax1 - ax0, ay1 - ay0
        ty, tx, th, tw = codes.unbind(-1)
        if self.max_log_size is not None:
            th = th.clamp(max=self.max_log_size)
            tw = tw.clamp(max=self.max_log_size)
        w = torch.exp(tw) * wa
        h = torch.exp(th) * ha
        y = ty * ha + ya
        x = tx * wa + xa
        return torch.stack([x - w / 2.0, y - h / 2.0, x + w / 2.0, y + h / 2.0], dim=-1)
