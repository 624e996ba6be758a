"""Detection post-processing inside an exported graph (paper §5.1 inference, as postprocess.py).

``export_detections`` computes what ``postprocess_detections`` computes, batched, from
traceable tensor operations, with outputs of a fixed rank:

1. top-k (default 5000) (anchor, class) logits per image over all levels;
2. their box codes decoded against anchors computed from the feature-map sizes (so a graph
   traced with a dynamic input size computes its own anchors);
3. mapped to original-image pixels (the letterbox: ``x_orig = x_input / scale``) and clipped
   to the original image;
4. per-class NMS as ONE ONNX ``NonMaxSuppression`` node over (image, class): each candidate
   scores only in its own class's row, so boxes of different classes never suppress each
   other — what torchvision's ``batched_nms`` does per image — or Gaussian soft-NMS as the
   same batched tensor loop ``postprocess.soft_nms`` runs;
5. the best ``max_detections`` per image, sorted by score and padded.

Outputs: ``boxes`` (B, D, 4) xyxy in original pixels, ``scores`` (B, D), ``labels`` (B, D)
int64, ``num_detections`` (B,) int64; rows from ``num_detections`` on are padding (zeros,
label -1). D = ``max_detections`` (fewer only for an input with fewer candidates).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torchvision.ops import batched_nms

from ...errors import ConfigError
from ..base import ExportGeometry
from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .config import DetPostprocessConfig
from .postprocess import at_most, select_candidates, soft_nms, to_original

#: the score of a (box, class) pair that is not a candidate; real scores are sigmoids >= 0
_NOT_CANDIDATE = -1.0


class ClassNMS(torch.autograd.Function):
    """Greedy NMS per (image, class): boxes (B, K, 4) xyxy, class_scores (B, C, K) → (M, 3)
    rows of (image, class, box index) kept.

    Exported to ONNX it is the operator ``NonMaxSuppression`` (opset ≥ 10; its IoU and score
    tests are strict ``>`` as torchvision's). In PyTorch it runs torchvision's ``batched_nms``
    per image, which gives the same rows when every box scores above ``score_threshold`` in
    at most one class — how ``export_detections`` calls it. Rows come grouped by image.
    """

    @staticmethod
    def forward(ctx: Any, boxes: torch.Tensor, class_scores: torch.Tensor, iou_threshold: float,
                score_threshold: float) -> torch.Tensor:
        scores, classes = class_scores.max(dim=1)
        rows = []
        for b in range(boxes.shape[0]):
            cand = (scores[b] > score_threshold).nonzero().squeeze(1)
            keep = cand[batched_nms(boxes[b, cand], scores[b, cand], classes[b, cand], iou_threshold)]
            rows.append(torch.stack([torch.full_like(keep, b), classes[b, keep], keep], dim=1))
        return torch.cat(rows)

    @staticmethod
    def symbolic(g, boxes, class_scores, iou_threshold: float, score_threshold: float):
        # every box may be kept in its class: at most K per (image, class)
        max_out = g.op("Gather", g.op("Shape", boxes), g.op("Constant", value_t=torch.tensor([1])))
        iou = g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32))
        thr = g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32))
        return g.op("NonMaxSuppression", boxes, class_scores, max_out, iou, thr, center_point_box_i=0)


def class_nms_keep(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, num_classes: int,
                   iou_threshold: float) -> torch.Tensor:
    """Bool (B, K): the candidates that per-class NMS keeps (one ``ClassNMS`` for the batch)."""
    own = classes.unsqueeze(1) == torch.arange(num_classes, device=classes.device).view(1, -1, 1)
    class_scores = torch.where(own, scores.unsqueeze(1), torch.full_like(scores.unsqueeze(1), _NOT_CANDIDATE))
    sel = ClassNMS.apply(boxes, class_scores, float(iou_threshold), _NOT_CANDIDATE / 2)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[sel[:, 0], sel[:, 2]] = True
    return keep


def export_detections(
    cls_outputs: Sequence[torch.Tensor],
    box_outputs: Sequence[torch.Tensor],
    anchors: AnchorGenerator,
    num_classes: int,
    geometry: ExportGeometry,
    cfg: DetPostprocessConfig = DetPostprocessConfig(),
    box_coder: BoxCoder | None = None,
) -> dict[str, torch.Tensor]:
    """``{"boxes", "scores", "labels", "num_detections"}`` of a batch (see the module docstring)."""
    coder = box_coder or BoxCoder()
    device = cls_outputs[0].device
    grid = anchors.for_feature_sizes([c.shape[-2:] for c in cls_outputs], device)
    # non-finite candidates rank last with a -inf logit (score 0): an exported model has no NaN to drop
    logits, codes, anchor_idx, classes, _ = select_candidates(cls_outputs, box_outputs, num_classes, cfg.max_candidates)
    boxes = coder.decode(codes.float(), grid[anchor_idx])
    sizes = geometry.orig_sizes.to(boxes)
    boxes = to_original(boxes, geometry.scales.to(boxes), torch.zeros_like(sizes), sizes)
    scores = logits.float().sigmoid()
    rows = torch.arange(boxes.shape[0], device=device).unsqueeze(1)

    if cfg.nms == "soft_nms":
        idx, top, valid = soft_nms(boxes, scores, classes, cfg.soft_nms_sigma, cfg.soft_nms_score_threshold,
                                   cfg.max_detections)
        # picked scores never increase, so the valid picks are a prefix of each row
        valid = valid & (top >= cfg.score_threshold)
    else:
        kept = torch.where(class_nms_keep(boxes, scores, classes, num_classes, cfg.iou_threshold), scores,
                           torch.full_like(scores, _NOT_CANDIDATE))
        top, idx = kept.topk(at_most(kept.shape[1], cfg.max_detections), dim=1)
        valid = top >= max(cfg.score_threshold, 0.0)
    return {
        "boxes": torch.where(valid.unsqueeze(-1), boxes[rows, idx], torch.zeros_like(boxes[rows, idx])),
        "scores": torch.where(valid, top, torch.zeros_like(top)),
        "labels": torch.where(valid, classes[rows, idx], torch.full_like(classes[rows, idx], -1)),
        "num_detections": valid.sum(dim=1),
    }


#: two scores closer than this are a tie as far as an exported graph is concerned: float32
#: rounding (~1e-7) may order or suppress them either way in onnxruntime and PyTorch
TIE = 1e-5
#: an image whose detection scores all lie within this of each other cannot tell its detections
#: apart (an untrained model): which boxes survive is a matter of ties throughout
DEGENERATE_SPREAD = 1e-3


def check_detections(got: Mapping[str, Any], ref: Mapping[str, Any], tolerance: float = 1e-4) -> dict[str, float]:
    """Detections of an exported graph vs PyTorch's on the same input (numpy arrays by name).

    Per image: the same number of detections and the same scores as sorted lists (within
    ``tolerance``); every detection matched by one of the other side with the same label, a box
    within ``tolerance`` times the boxes' magnitude and a score within ``tolerance`` — except
    where its score ties one of the other side (``TIE``): which of two tied boxes survives NMS
    or top-k is up to float rounding. Such exceptions may not be the majority of an image's
    detections unless its scores are degenerate (an untrained model ties almost everywhere).
    Returns the largest box and score differences of matched detections and the share left
    unmatched by ties; raises ``ConfigError`` where the outputs disagree otherwise.
    """
    import numpy as np

    box_tol = tolerance * max(1.0, float(np.abs(ref["boxes"]).max()) if ref["boxes"].size else 1.0)
    worst_box = worst_score = 0.0
    tied = total = 0
    for i in range(len(ref["num_detections"])):
        n, m = int(got["num_detections"][i]), int(ref["num_detections"][i])
        if n != m:
            raise ConfigError(f"exported detections of image {i}: {n} from the graph, {m} from PyTorch; please report this")
        g_scores, r_scores = got["scores"][i][:n], ref["scores"][i][:n]
        sorted_diff = float(np.abs(np.sort(g_scores) - np.sort(r_scores)).max()) if n else 0.0
        if sorted_diff > tolerance:
            raise ConfigError(f"exported detection scores of image {i} differ from PyTorch's by {sorted_diff:.3g}; "
                              "please report this")
        free, unmatched = list(range(n)), 0
        for j in range(n):
            label, box, score = got["labels"][i][j], got["boxes"][i][j], g_scores[j]
            near = [k for k in free if ref["labels"][i][k] == label and abs(r_scores[k] - score) <= tolerance
                    and np.abs(ref["boxes"][i][k] - box).max() <= box_tol]
            if near:
                free.remove(near[0])
                worst_box = max(worst_box, float(np.abs(ref["boxes"][i][near[0]] - box).max()))
                worst_score = max(worst_score, float(abs(r_scores[near[0]] - score)))
            elif (np.abs(r_scores - score) <= TIE).any():
                unmatched += 1
            else:
                raise ConfigError(f"exported detection {j} of image {i} (label {label}, score {score:.6f}, box "
                                  f"{np.round(box, 2).tolist()}) has no counterpart in PyTorch's; please report this")
        degenerate = n and float(g_scores.max() - g_scores.min()) < DEGENERATE_SPREAD
        if 2 * unmatched > n and not degenerate:
            raise ConfigError(f"{unmatched} of the {n} exported detections of image {i} differ from PyTorch's in box or "
                              "label; please report this")
        tied, total = tied + unmatched, total + n
    return {"boxes": worst_box, "scores": worst_score, "unmatched_ties": tied / max(total, 1)}
