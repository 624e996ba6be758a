"""Detection evaluation: COCO AP with pycocotools, and the Pascal VOC AP50 protocol.

COCO (paper §5.1 reports these): predictions become a COCO results JSON (native category
ids, [x, y, w, h], image ids), written to ``output_dir`` so it can be submitted or
re-scored, and pycocotools' COCOeval scores that very file: AP@[.5:.95], AP50, AP75,
APs/m/l, and a per-class AP table. Crowd regions (and VOC's difficult objects, which the
datasets mark ``iscrowd``) are ignored by COCOeval itself.

VOC: AP at IoU > 0.5 per class as the VOC devkit computes it — detections sorted by score,
each taken by its best-overlapping box of the class; a difficult box makes it neither TP
nor FP, a box already taken makes it an FP — with the VOC2010+ area or the VOC2007
11-point interpolation. The same run reports COCOeval's numbers on VOC, prefixed "coco_".
Coordinates are continuous (VOC's 1-based pixels become [x1 - 1, x2]), which equals the
devkit's "+1" width convention exactly, so no +1 appears here.

With ``DetEvalConfig.paper_protocol`` the recall and mAP@0.5 that HybridNets / YOLOP report
are computed too, as their code does (tasks/detection/paper_metrics.py), under keys prefixed
with the protocol's name; the main metric stays COCO's (or VOC's).

Non-finite predictions never reach pycocotools (which would count a NaN overlap as a match):
post-processing leaves them out and counts them (``"nonfinite"`` per image), ``add`` drops any
that are left, and when no image has a finite detection while outputs were dropped as
non-finite, ``compute`` raises ``NonFiniteError`` instead of returning an AP.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ...errors import ConfigError, NonFiniteError
from ..base import Evaluator
from .config import DetEvalConfig
from .paper_metrics import paper_detection_metrics

log = logging.getLogger(__name__)

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class DetectionEvaluator(Evaluator):
    """Collects per-image predictions (original pixels, contiguous labels) and scores them.

    coco_gt: the split's ground truth (pycocotools COCO, native category ids).
    cat_ids: contiguous label → native category id (a sequence, or a mapping).
    """

    def __init__(
        self,
        coco_gt: COCO,
        cat_ids: Sequence[int] | Mapping[int, int],
        class_names: Sequence[str] | None = None,
        output_dir: str | os.PathLike | None = None,
        protocol: str = "coco",
        cfg: DetEvalConfig = DetEvalConfig(),
    ):
        if protocol not in ("coco", "voc"):
            raise ValueError(f"evaluation protocol must be 'coco' or 'voc', got {protocol!r}")
        self.coco_gt = coco_gt
        self.cat_ids = dict(cat_ids) if isinstance(cat_ids, Mapping) else dict(enumerate(cat_ids))
        self.label_of_cat = {c: l for l, c in self.cat_ids.items()}
        names = list(class_names) if class_names is not None else None
        self.class_names = {
            c: (names[l] if names is not None and l < len(names) else str(c)) for l, c in self.cat_ids.items()
        }
        self.output_dir = output_dir
        self.protocol = protocol
        self.cfg = cfg
        self.main_metric = "AP50" if protocol == "voc" else "AP"
        self.per_class: dict[str, dict[str, float]] = {}
        self.metrics: dict[str, float] = {}
        self.reset()

    @classmethod
    def from_dataset(cls, dataset, output_dir=None, cfg: DetEvalConfig = DetEvalConfig(),
                     annotation: str = "det") -> "DetectionEvaluator":
        """The evaluator of a dataset's box annotation ``annotation`` (its COCO-format ground truth)."""
        protocol = cfg.protocol
        if protocol == "auto":
            name = str(getattr(dataset, "name", "") or type(dataset).__name__).lower()
            protocol = "voc" if name.startswith("voc") else "coco"
        names = getattr(dataset, "class_names", None)
        if isinstance(names, Mapping):
            names = names.get(annotation)
        return cls(dataset.box_gt(annotation), dataset.cat_ids, names, output_dir, protocol, cfg)

    # -- accumulation --------------------------------------------------------------------
    def reset(self) -> None:
        self._preds: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        #: image id → outputs left out because they were not finite
        self._nonfinite: dict[int, int] = {}

    def update(self, predictions: list[dict[str, torch.Tensor]], batch: dict[str, Any]) -> None:
        for pred, meta in zip(predictions, batch["meta"]):
            self.add(meta["image_id"], pred["boxes"], pred["scores"], pred["labels"], pred.get("nonfinite", 0))

    def add(self, image_id, boxes, scores, labels, nonfinite: int = 0) -> None:
        """One image's predictions: xyxy boxes in original pixels, contiguous labels.

        ``nonfinite``: outputs post-processing already left out; rows with a non-finite box or
        score are left out here too, and counted.
        """
        to_np = lambda t: t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)  # noqa: E731
        image_id = int(image_id)
        boxes = to_np(boxes).astype(np.float64).reshape(-1, 4)
        scores = to_np(scores).astype(np.float64).reshape(-1)
        labels = to_np(labels).astype(np.int64).reshape(-1)
        finite = np.isfinite(boxes).all(1) & np.isfinite(scores)
        self._preds[image_id] = (boxes[finite], scores[finite], labels[finite])
        self._nonfinite[image_id] = int(nonfinite) + int((~finite).sum())

    def sync(self) -> None:
        """Gather all processes' predictions; a DistributedSampler's padding duplicates merge."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (list(self._preds.items()), list(self._nonfinite.items())))
        for preds, nonfinite in gathered:
            self._preds.update(dict(preds))
            self._nonfinite.update(dict(nonfinite))

    @property
    def nonfinite_outputs(self) -> int:
        """Outputs left out as non-finite over the images evaluated."""
        return sum(self._nonfinite.values())

    def _check_finite(self) -> None:
        """No AP from a model whose outputs were all non-finite: say so instead."""
        dropped = self.nonfinite_outputs
        if not dropped:
            return
        if self._preds and all(len(p[0]) == 0 for p in self._preds.values()):
            raise NonFiniteError(
                f"detection outputs were all non-finite (NaN/inf): {dropped} candidate boxes/scores left out over "
                f"{len(self._preds)} image(s) and no finite detection remained, so no AP is reported; the network "
                "overflowed, or its weights or inputs hold NaN/inf (a diverged training?)"
            )
        log.warning("detection: %d non-finite candidate boxes/scores left out over %d image(s) (NaN/inf outputs)",
                    dropped, sum(1 for v in self._nonfinite.values() if v))

    # -- scoring ---------------------------------------------------------------------------
    def coco_results(self) -> list[dict[str, Any]]:
        """The predictions as COCO result records (native category ids, xywh)."""
        out = []
        for image_id in sorted(self._preds):
            boxes, scores, labels = self._preds[image_id]
            unknown = sorted(set(labels.tolist()) - set(self.cat_ids))
            if unknown:
                raise ConfigError(
                    f"the model predicts label(s) {unknown}, but the dataset has {len(self.cat_ids)} detection "
                    "classes; set the detection head's num_classes to the dataset's")
            xywh = boxes.copy()
            xywh[:, 2:] -= xywh[:, :2]
            for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
                out.append({"image_id": image_id, "category_id": self.cat_ids[label], "bbox": box, "score": score})
        return out

    def compute(self) -> dict[str, float]:
        self._check_finite()
        results = self.coco_results()
        source: Any = results
        if self.output_dir is not None:
            os.makedirs(self.output_dir, exist_ok=True)
            source = os.path.join(os.fspath(self.output_dir), self.cfg.results_file)
            with open(source, "w") as f:
                json.dump(results, f)
        coco, per_class = self._coco_eval(source, bool(results))
        if self.protocol == "voc":
            voc = self._voc_eval()
            finite = [v for v in voc.values() if not np.isnan(v)]
            metrics = {"AP50": float(np.mean(finite)) if finite else 0.0}
            metrics.update({f"coco_{k}": v for k, v in coco.items()})
            for name, ap in voc.items():
                per_class.setdefault(name, {})["VOC AP50"] = ap
        else:
            metrics = coco
        if self.cfg.paper_protocol != "none":
            paper, paper_per_class = paper_detection_metrics(self._paper_images(), self.cfg.paper_protocol,
                                                             [self.class_names[c] for c in self.cat_ids.values()])
            metrics = {**metrics, **paper}
            for name, vals in paper_per_class.items():
                per_class.setdefault(name, {}).update({"paper R": vals["recall"], "paper AP50": vals["AP50"]})
        self.metrics, self.per_class = metrics, per_class
        return metrics

    def _paper_images(self):
        """Per evaluated image: its detections and its ground truth (contiguous labels, xyxy, ignore flags)."""
        for image_id in sorted(self._preds):
            boxes, scores, labels = self._preds[image_id]
            anns = [a for a in self.coco_gt.loadAnns(self.coco_gt.getAnnIds(imgIds=[image_id]))
                    if a["category_id"] in self.label_of_cat]
            gt = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            gt[:, 2:] += gt[:, :2]
            gt_labels = np.array([self.label_of_cat[a["category_id"]] for a in anns], dtype=np.int64)
            ignore = np.array([bool(a.get("ignore", 0) or a.get("iscrowd", 0)) for a in anns], dtype=bool)
            yield boxes, scores, labels, gt, gt_labels, ignore

    def _coco_eval(self, source, any_results: bool) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        image_ids = sorted(self._preds)
        if not any_results or not image_ids:
            self._summary, self.pr_curves = "no detections", None
            return {k: 0.0 for k in COCO_METRICS}, {}
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):  # pycocotools prints its progress
            dt = self.coco_gt.loadRes(source)
            ev = COCOeval(self.coco_gt, dt, "bbox")
            ev.params.imgIds = image_ids
            ev.evaluate()
            ev.accumulate()
        with contextlib.redirect_stdout(io.StringIO()) as summary:
            ev.summarize()
        self._summary = summary.getvalue()
        metrics = {k: float(v) for k, v in zip(COCO_METRICS, ev.stats)}
        precision = ev.eval["precision"]  # (iou thr, recall, category, area range, max dets)
        # kept for the precision-recall pictures of `mtedet eval` (engine/evaluate.py)
        self.pr_curves = {"precision": precision[:, :, :, 0, -1], "recall": np.asarray(ev.params.recThrs),
                          "iou": np.asarray(ev.params.iouThrs),
                          "classes": [self.class_names.get(c, str(c)) for c in ev.params.catIds]}
        per_class = {}
        for k, cat in enumerate(ev.params.catIds):
            p = precision[:, :, k, 0, -1]
            ap = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
            p50 = precision[0, :, k, 0, -1]
            ap50 = float(p50[p50 > -1].mean()) if (p50 > -1).any() else float("nan")
            per_class[self.class_names.get(cat, str(cat))] = {"AP": ap, "AP50": ap50}
        return metrics, per_class

    def _voc_eval(self) -> dict[str, float]:
        """VOC AP50 per class over the images seen."""
        tps: dict[int, list] = {c: [] for c in self.cat_ids.values()}
        npos = {c: 0 for c in self.cat_ids.values()}
        for image_id, (boxes, scores, labels) in self._preds.items():
            anns = self.coco_gt.loadAnns(self.coco_gt.getAnnIds(imgIds=[image_id]))
            cats = np.array([a["category_id"] for a in anns], dtype=np.int64)
            gt = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            gt[:, 2:] += gt[:, :2]
            difficult = np.array([bool(a.get("ignore", 0) or a.get("iscrowd", 0)) for a in anns], dtype=bool)
            det_cats = np.array([self.cat_ids[l] for l in labels.tolist()], dtype=np.int64)
            for c in tps:
                g = cats == c
                npos[c] += int((g & ~difficult).sum())
                d = det_cats == c
                if d.any():
                    order = np.argsort(-scores[d], kind="stable")
                    tp, fp = voc_tp_fp(boxes[d][order], gt[g], difficult[g])
                    tps[c].append((scores[d][order], tp, fp))
        out = {}
        for c, parts in tps.items():
            name = self.class_names.get(c, str(c))
            if npos[c] == 0:
                out[name] = float("nan")
                continue
            if not parts:
                out[name] = 0.0
                continue
            s = np.concatenate([p[0] for p in parts])
            order = np.argsort(-s, kind="stable")
            tp = np.cumsum(np.concatenate([p[1] for p in parts])[order])
            fp = np.cumsum(np.concatenate([p[2] for p in parts])[order])
            recall = tp / npos[c]
            precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            out[name] = voc_average_precision(recall, precision, self.cfg.voc_ap_method)
        return out

    def report(self) -> str:
        if not self.metrics:
            return "detection: nothing evaluated yet"
        title = "VOC protocol (AP50, difficult ignored)" if self.protocol == "voc" else "COCO protocol"
        lines = [f"detection — {title}, {len(self._preds)} images"]
        if self.nonfinite_outputs:
            lines.append(f"({self.nonfinite_outputs} non-finite candidate boxes/scores left out, not scored)")
        lines.append("  ".join(f"{k} {v * 100:.2f}" for k, v in self.metrics.items() if "/" not in k))
        p = self.cfg.paper_protocol
        if f"{p}/recall" in self.metrics:
            lines.append(f"{p} protocol (YOLOv5-style matching, 101-point AP; not COCO's): "
                         f"recall {100 * self.metrics[f'{p}/recall']:.2f}  mAP50 {100 * self.metrics[f'{p}/mAP50']:.2f}")
        if self.per_class:
            cols = sorted({k for v in self.per_class.values() for k in v})
            width = max(12, max(len(n) for n in self.per_class))
            cw = {c: max(10, len(c) + 2) for c in cols}
            lines.append(f"{'class':<{width}}" + "".join(f"{c:>{cw[c]}}" for c in cols))
            for name, vals in self.per_class.items():
                cells = "".join(f"{vals.get(c, float('nan')) * 100:>{cw[c]}.2f}" for c in cols)
                lines.append(f"{name:<{width}}{cells}")
        return "\n".join(lines)


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return inter / np.maximum(union, np.finfo(np.float64).eps)


def voc_tp_fp(dets: np.ndarray, gt: np.ndarray, difficult: np.ndarray, iou_threshold: float = 0.5):
    """TP / FP flags of one image's detections of one class (sorted by score, descending)."""
    n = len(dets)
    tp, fp = np.zeros(n), np.zeros(n)
    if len(gt) == 0:
        fp[:] = 1
        return tp, fp
    iou = box_iou_np(dets, gt)
    best, best_iou = iou.argmax(1), iou.max(1)
    taken = np.zeros(len(gt), dtype=bool)
    for i in range(n):  # greedy in score order: a box can be taken once (the devkit's rule)
        j = best[i]
        if best_iou[i] <= iou_threshold:
            fp[i] = 1
        elif difficult[j]:
            continue
        elif not taken[j]:
            tp[i], taken[j] = 1, True
        else:
            fp[i] = 1
    return tp, fp


def voc_average_precision(recall: np.ndarray, precision: np.ndarray, method: str = "area") -> float:
    """Area under the interpolated PR curve (VOC2010+) or the VOC2007 11-point mean."""
    if method == "11point":
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.arange(0.0, 1.1, 0.1)]))
    if method != "area":
        raise ValueError(f"VOC AP method must be 'area' or '11point', got {method!r}")
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope: best precision at ≥ recall
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))
