"""Detection recall and mAP@0.5 as the driving multi-task papers compute them, beside COCO AP.

HybridNets and YOLOP report "recall" and "mAP50" on BDD100K from the YOLOv5-era evaluation
code they ship, which differs from COCOeval (our main metric) in matching, interpolation and
what "recall" means. ``paper_detection_metrics`` reproduces it, for one of two protocols that
differ only where stated:

1. Predictions: the task's post-processed detections, in original image pixels (the papers
   keep every NMS survivor of score > 0.001 after NMS at IoU 0.6 — set
   ``det.postprocess.score_threshold=0.001`` and ``iou_threshold=0.6`` to match; we also cap
   at ``max_detections``).
2. Matching, per image and class: each detection takes the ground-truth box of its class it
   overlaps most; it is a true positive when that IoU is ≥ 0.5 ("hybridnets") or > 0.5
   ("yolop") and no higher-scoring detection has taken that box already; otherwise a false
   positive. (HybridNets' code pairs boxes by IoU first; as its detections come sorted by
   score, the result is this rule.) Ignore (crowd) ground-truth boxes, which neither paper's
   data has, are left out of the ground truth; a false positive whose IoU with an ignore box of
   its class passes the same threshold is dropped (neither true nor false).
3. Per class c with n_c > 0 ground-truth boxes in the evaluated images (classes without any are
   left out of both means): detections of c sorted by score (descending); cumulative TP and FP
   give recall_k = TP_k / n_c and precision_k = TP_k / (TP_k + FP_k).
   - recall_c = the recall after the last detection: the share of c's boxes found by any kept
     detection. (The code evaluates recall at the confidence where the mean recall over
     classes is highest, which is the lowest one.)
   - AP50_c: the precision envelope p̂(r) = max precision at recall ≥ r over the points
     (0, 1), (recall_k, precision_k) and a closing point (r_end, 0), with r_end = 1.0
     ("hybridnets") or the last recall + 0.01 ("yolop"); AP50_c = the trapezoidal integral of
     p̂, linearly interpolated, sampled at the 101 recalls 0, 0.01, …, 1 (where two points share
     a recall, the later one counts: under "hybridnets" a class found perfectly scores 0.995, as
     in the papers' code). A class with boxes but no detection has recall and AP 0.
4. ``recall`` and ``mAP50`` = the means of recall_c and AP50_c over those classes.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

PAPER_PROTOCOLS = ("hybridnets", "yolop")


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return box_iou(torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(b, np.float64))).numpy()


def _hits(iou: np.ndarray, protocol: str) -> np.ndarray:
    return iou >= 0.5 if protocol == "hybridnets" else iou > 0.5


def match_image_class(det_boxes: np.ndarray, gt_boxes: np.ndarray, ignore_boxes: np.ndarray, protocol: str) -> np.ndarray:
    """Per detection (sorted by score, descending) of one class in one image: 1 TP, 0 FP, -1 dropped."""
    n = len(det_boxes)
    out = np.zeros(n, np.int8)
    if n == 0:
        return out
    if len(gt_boxes):
        iou = _iou(det_boxes, gt_boxes)
        best = iou.argmax(1)
        hit = _hits(iou[np.arange(n), best], protocol)
        taken = np.zeros(len(gt_boxes), bool)
        for i in range(n):
            if hit[i] and not taken[best[i]]:
                out[i], taken[best[i]] = 1, True
    if len(ignore_boxes):
        on_ignore = _hits(_iou(det_boxes, ignore_boxes).max(1), protocol)
        out[(out == 0) & on_ignore] = -1
    return out


def average_precision_101(recall: np.ndarray, precision: np.ndarray, protocol: str) -> float:
    """Step 3's AP: envelope over (0, 1), the curve, (r_end, 0); trapezoids on 101 recall samples."""
    end = 1.0 if protocol == "hybridnets" else recall[-1] + 0.01
    r = np.concatenate([[0.0], recall, [end]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.flip(np.maximum.accumulate(np.flip(p)))
    x = np.linspace(0, 1, 101)
    y = np.interp(x, r, p)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))


def paper_detection_metrics(
    images: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    protocol: str,
    class_names: Sequence[str] | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """``images``: per image (det boxes xyxy, det scores, det labels, gt boxes xyxy, gt labels, gt ignore).

    Returns ({"<protocol>/recall", "<protocol>/mAP50"}, {class: {"recall", "AP50"}}); empty when no
    image has a ground-truth box.
    """
    if protocol not in PAPER_PROTOCOLS:
        raise ValueError(f"paper protocol {protocol!r}; valid: {', '.join(PAPER_PROTOCOLS)}")
    flags, scores, labels, n_gt = [], [], [], {}
    for boxes, conf, det_labels, gt_boxes, gt_labels, gt_ignore in images:
        for c in np.unique(np.concatenate([det_labels, gt_labels]).astype(np.int64)):
            d = det_labels == c
            order = np.argsort(-conf[d], kind="stable")
            g = gt_labels == c
            n_gt[int(c)] = n_gt.get(int(c), 0) + int((g & ~gt_ignore).sum())
            f = match_image_class(boxes[d][order], gt_boxes[g & ~gt_ignore], gt_boxes[g & gt_ignore], protocol)
            keep = f >= 0
            flags.append(f[keep])
            scores.append(conf[d][order][keep])
            labels.append(np.full(int(keep.sum()), c, np.int64))
    classes = sorted(c for c, n in n_gt.items() if n > 0)
    if not classes:
        return {}, {}
    flags_a, scores_a, labels_a = (np.concatenate(x) if x else np.zeros(0) for x in (flags, scores, labels))
    per_class: dict[str, dict[str, float]] = {}
    for c in classes:
        sel = labels_a == c
        order = np.argsort(-scores_a[sel], kind="stable")
        tp = flags_a[sel][order].astype(np.float64)
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        if not len(tp):
            per_class[name] = {"recall": 0.0, "AP50": 0.0}
            continue
        tpc, fpc = np.cumsum(tp), np.cumsum(1 - tp)
        recall, precision = tpc / n_gt[c], tpc / (tpc + fpc)
        per_class[name] = {"recall": float(recall[-1]), "AP50": average_precision_101(recall, precision, protocol)}
    metrics = {
        f"{protocol}/recall": float(np.mean([v["recall"] for v in per_class.values()])),
        f"{protocol}/mAP50": float(np.mean([v["AP50"] for v in per_class.values()])),
    }
    return metrics, per_class
