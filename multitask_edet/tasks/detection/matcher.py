"""Anchor ↔ ground-truth matching (paper §5.1; the arg-max matcher of the reference).

Every anchor takes the ground-truth box of highest IoU. IoU ≥ ``high`` → positive (the
box's index); IoU < ``low`` → ``BELOW_LOW_THRESHOLD`` (negative); in between →
``BETWEEN_THRESHOLDS`` (ignored). With ``force_match`` every box also claims the anchor it
overlaps most, whatever the IoU ("low-quality" matches), so no object goes unlearned; when
two boxes claim one anchor the lower box index wins, as in the reference.

Crowd / difficult boxes (``ignore``) never make positives and are never force-matched: an
anchor whose best match is such a box (IoU ≥ ``low``, and higher than with any regular
box) is ignored — neither object nor background. Optionally a negative that lies mostly
inside an ignore box (intersection / anchor area ≥ ``ignore_ioa``) is ignored too.

Everything is batched: (B, M) padded boxes with a validity mask against (N,) anchors.
"""
from __future__ import annotations

import torch

#: anchor is background (best IoU below the low threshold)
BELOW_LOW_THRESHOLD = -1
#: anchor is ignored (IoU between the thresholds, or its best match is a crowd region)
BETWEEN_THRESHOLDS = -2
NEGATIVE = BELOW_LOW_THRESHOLD
IGNORED = BETWEEN_THRESHOLDS


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 3] - boxes[..., 1]) * (boxes[..., 2] - boxes[..., 0])


def batched_intersection(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Intersection areas (B, M, N) of xyxy ``boxes`` (B, M, 4) with ``anchors`` (N, 4)."""
    b = boxes.unsqueeze(-2)  # (B, M, 1, 4)
    ih = (torch.min(b[..., 3], anchors[:, 3]) - torch.max(b[..., 1], anchors[:, 1])).clamp(min=0)
    iw = (torch.min(b[..., 2], anchors[:, 2]) - torch.max(b[..., 0], anchors[:, 0])).clamp(min=0)
    return ih * iw


def batched_iou(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """IoU (B, M, N) of ``boxes`` (B, M, 4) with ``anchors`` (N, 4), both xyxy.

    torchvision's box_iou is 2-D only; this is the batched form, with the reference's
    operation order (so threshold decisions at exactly 0.5 agree bit for bit).
    """
    inter = batched_intersection(boxes, anchors)
    union = box_area(boxes).unsqueeze(-1) + box_area(anchors) - inter
    # in place: (B, M, N) is the largest tensor of target assignment; 0/0 (two empty boxes) → 0
    return inter.div_(union).nan_to_num_(0.0)


class ArgMaxMatcher:
    def __init__(
        self,
        high: float = 0.5,
        low: float | None = None,
        force_match: bool = True,
        ignore_ioa: float | None = None,
    ):
        low = high if low is None else low
        if low > high:
            raise ValueError(f"matcher: low threshold {low} must not exceed high threshold {high}")
        self.high, self.low = float(high), float(low)
        self.force_match = force_match
        self.ignore_ioa = ignore_ioa

    def __call__(
        self,
        boxes: torch.Tensor,
        valid: torch.Tensor,
        ignore: torch.Tensor,
        anchors: torch.Tensor,
    ) -> torch.Tensor:
        """Matches (B, N) int64: box index ≥ 0, or NEGATIVE / IGNORED.

        boxes (B, M, 4) xyxy, padded; valid (B, M) bool marks real boxes; ignore (B, M) bool
        marks crowd/difficult ones; anchors (N, 4) xyxy.
        """
        B, M = boxes.shape[:2]
        N = anchors.shape[0]
        if M == 0:
            return torch.full((B, N), NEGATIVE, dtype=torch.long, device=anchors.device)
        iou = batched_iou(boxes, anchors)
        regular = valid & ~ignore
        crowd = valid & ignore

        best_iou, best_box = iou.masked_fill(~regular.unsqueeze(-1), -1.0).max(dim=1)
        matches = torch.where(
            best_iou < self.low,
            torch.full_like(best_box, NEGATIVE),
            torch.where(best_iou < self.high, torch.full_like(best_box, IGNORED), best_box),
        )

        crowd_iou = iou.masked_fill(~crowd.unsqueeze(-1), -1.0).amax(dim=1)
        matches = torch.where((crowd_iou > best_iou) & (crowd_iou >= self.low), IGNORED, matches)
        if self.ignore_ioa is not None:
            ioa = batched_intersection(boxes, anchors) / box_area(anchors).clamp(min=1e-6)
            covered = ioa.masked_fill(~crowd.unsqueeze(-1), 0.0).amax(dim=1) >= self.ignore_ioa
            matches = torch.where(covered & (matches == NEGATIVE), IGNORED, matches)

        if self.force_match:
            matches = self._force_best_anchor(iou, regular, matches)
        return matches

    @staticmethod
    def _force_best_anchor(iou: torch.Tensor, regular: torch.Tensor, matches: torch.Tensor) -> torch.Tensor:
        B, M, N = iou.shape
        best_anchor = iou.argmax(dim=2)  # (B, M), first anchor on ties
        # padded / crowd boxes write into a spare column N that is dropped afterwards
        target = torch.where(regular, best_anchor, torch.full_like(best_anchor, N))
        box_ids = torch.arange(M, device=iou.device).expand(B, M)
        forced = torch.full((B, N + 1), M, dtype=torch.long, device=iou.device)
        forced.scatter_reduce_(1, target, box_ids, reduce="amin", include_self=True)
        forced = forced[:, :N]
        return torch.where(forced < M, forced, matches)
