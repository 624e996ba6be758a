"""From raw head outputs to detections in original-image pixels (paper §5.1, inference).

1. top-k (default 5000) (anchor, class) logits over all levels of an image;
2. decode their box codes against the anchors;
3. map to original-image pixels (undo letterbox padding and resize) and clip to the image;
4. per-class NMS (torchvision ``batched_nms``, IoU 0.5) or Gaussian soft-NMS;
5. keep the best 100.

Mapping before NMS changes nothing: IoU is invariant to the one scale + shift of an image.

Non-finite outputs (NaN/inf logits or box codes, or boxes that overflow when decoded) are
never detections: they are left out before the top-k (NaN would otherwise rank first) and
counted per image in ``"nonfinite"``, so the evaluator can say so instead of scoring them.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision.ops import batched_nms

from .anchors import flatten_level
from .box_coder import BoxCoder
from .config import DetPostprocessConfig


def at_most(n: Any, k: int) -> Any:
    """min(n, k) for a size ``n`` that is an int, or a 0-dim tensor when a graph is traced with a
    dynamic input size (the clamp then stays in the graph instead of becoming a constant)."""
    return torch.clamp(n, max=k) if isinstance(n, torch.Tensor) else min(int(n), k)


def select_candidates(
    cls_outputs: Sequence[torch.Tensor], box_outputs: Sequence[torch.Tensor], num_classes: int, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k over (anchor, class) logits per image → (logits, codes, anchor idx, class), each (B, K),
    and the number of non-finite (anchor, class) candidates per image (B,).

    A candidate is non-finite when its logit or any of its anchor's box codes is; it gets the
    logit -inf, so it ranks last (its slot in the top-k, if any, is marked by that -inf).
    """
    logits = torch.cat([flatten_level(c, num_classes) for c in cls_outputs], dim=1)
    codes = torch.cat([flatten_level(b, 4) for b in box_outputs], dim=1)
    B = logits.shape[0]
    bad = ~torch.isfinite(logits) | ~torch.isfinite(codes).all(-1, keepdim=True)
    nonfinite = bad.reshape(B, -1).sum(1)
    logits = logits.masked_fill(bad, float("-inf"))
    k = at_most(logits.shape[1] * num_classes, k)
    top, flat_idx = logits.reshape(B, -1).topk(k, dim=1)
    anchor_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
    classes = flat_idx % num_classes
    codes = torch.gather(codes, 1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
    return top, codes, anchor_idx, classes, nonfinite


def image_transforms(
    metas: Sequence[dict[str, Any]] | None, batch_size: int, image_size: tuple[int, int], device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: scale (B,), pad (B, 2) as (top, left), original size (B, 2) as (H, W).

    Without meta, predictions stay in input pixels and are clipped to the input.
    """
    scale, pad, size = [], [], []
    for i in range(batch_size):
        meta = metas[i] if metas is not None and metas[i] is not None else {}
        scale.append(float(meta.get("scale", 1.0)))
        pad.append([float(p) for p in meta.get("pad", (0.0, 0.0))])
        size.append([float(s) for s in meta.get("orig_size", image_size)])
    mk = lambda v: torch.tensor(v, dtype=torch.float32).to(device, non_blocking=True)  # noqa: E731
    return mk(scale), mk(pad), mk(size)


def to_original(boxes: torch.Tensor, scale: torch.Tensor, pad: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """xyxy (B, K, 4) input pixels → original pixels, clipped to the original image."""
    shift = pad[:, [1, 0, 1, 0]].unsqueeze(1)  # (left, top, left, top)
    out = (boxes - shift) / scale.view(-1, 1, 1)
    limit = size[:, [1, 0, 1, 0]].unsqueeze(1)  # (W, H, W, H)
    return torch.min(out.clamp(min=0), limit)


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    max_detections: int = 100,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian soft-NMS per class (Bodla et al. 2017), batched over images.

    boxes (B, K, 4), scores/classes (B, K). Each step takes every image's best remaining
    box and decays the scores of same-class boxes by exp(-IoU²/σ); boxes whose score falls
    to ``score_threshold`` or below leave. Picked scores never increase, so the first
    ``max_detections`` picks are the final top detections: the loop runs that many steps,
    one vectorised step for the whole batch, not once per candidate (torchvision has no
    soft-NMS). ``valid`` (B, K) excludes candidates from the start (their boxes must still be
    finite numbers). Returns (indices (B, D), decayed scores (B, D), valid (B, D)).
    """
    B, K = scores.shape
    steps = min(max_detections, K)
    scores = scores.clone()
    active = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid.clone()
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    rows = torch.arange(B, device=scores.device)
    picked_idx, picked_score, picked_valid = [], [], []
    neg_inf = torch.tensor(float("-inf"), device=scores.device, dtype=scores.dtype)
    for _ in range(steps):
        best = torch.where(active, scores, neg_inf).argmax(dim=1)
        valid = active[rows, best]
        picked_idx.append(best)
        picked_score.append(scores[rows, best])
        picked_valid.append(valid)
        top = boxes[rows, best].unsqueeze(1)  # (B, 1, 4)
        wh = (torch.min(top[..., 2:], boxes[..., 2:]) - torch.max(top[..., :2], boxes[..., :2])).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        iou = inter / (area[rows, best].unsqueeze(1) + area - inter).clamp(min=1e-12)
        same = classes == classes[rows, best].unsqueeze(1)
        decay = torch.where(same, torch.exp(-(iou * iou) / sigma), torch.ones_like(iou))
        scores = scores * decay
        active = active & (scores > score_threshold)
        active[rows, best] = False
    return torch.stack(picked_idx, 1), torch.stack(picked_score, 1), torch.stack(picked_valid, 1)


def postprocess_detections(
    cls_outputs: Sequence[torch.Tensor],
    box_outputs: Sequence[torch.Tensor],
    anchors: torch.Tensor,
    num_classes: int,
    image_size: tuple[int, int],
    metas: Sequence[dict[str, Any]] | None = None,
    cfg: DetPostprocessConfig = DetPostprocessConfig(),
    box_coder: BoxCoder | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Per image: dict(boxes (D, 4) xyxy original px, scores (D,), labels (D,) int64, nonfinite (0-d
    int64): the (anchor, class) candidates left out because their outputs were not finite)."""
    coder = box_coder or BoxCoder()
    logits, codes, anchor_idx, classes, nonfinite = select_candidates(
        cls_outputs, box_outputs, num_classes, cfg.max_candidates)
    B = logits.shape[0]
    boxes = coder.decode(codes.float(), anchors[anchor_idx])
    # finite codes can still decode to inf (exp of a huge size code): not a detection either
    ok = torch.isfinite(logits) & torch.isfinite(boxes).all(-1)
    nonfinite = (nonfinite + (torch.isfinite(logits) & ~ok).sum(1)).tolist()
    boxes = boxes.masked_fill(~ok.unsqueeze(-1), 0.0)
    scale, pad, size = image_transforms(metas, B, image_size, boxes.device)
    boxes = to_original(boxes, scale, pad, size)
    scores = logits.float().sigmoid()

    results = []
    if cfg.nms == "soft_nms":
        keep, new_scores, valid = soft_nms(
            boxes, scores, classes, cfg.soft_nms_sigma, cfg.soft_nms_score_threshold, cfg.max_detections, valid=ok)
        valid = valid & (new_scores >= cfg.score_threshold)
        rows = torch.arange(B, device=boxes.device).unsqueeze(1)
        kept_boxes, kept_classes = boxes[rows, keep], classes[rows, keep]
        for i in range(B):
            v = valid[i]
            results.append(_det(kept_boxes[i][v], new_scores[i][v], kept_classes[i][v], nonfinite[i]))
        return results
    # torchvision picks per-class loops or the coordinate-offset trick by size; one call per
    # image keeps its memory bounded (the CUDA kernel's mask is quadratic in the boxes given)
    for i in range(B):
        b, s, c = boxes[i][ok[i]], scores[i][ok[i]], classes[i][ok[i]]
        keep = batched_nms(b, s, c, cfg.iou_threshold)[: cfg.max_detections]
        if cfg.score_threshold > 0:
            keep = keep[s[keep] >= cfg.score_threshold]
        results.append(_det(b[keep], s[keep], c[keep], nonfinite[i]))
    return results


def _det(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, nonfinite: int = 0) -> dict[str, torch.Tensor]:
    # every value a tensor, like the rest of the record (callers move records with .cpu())
    return {"boxes": boxes.float(), "scores": scores.float(), "labels": labels.long(),
            "nonfinite": torch.tensor(int(nonfinite))}
