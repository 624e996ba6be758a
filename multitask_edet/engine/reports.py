"""What evaluation leaves for people: the printed tables, metrics.json and pictures.

Pictures a person would rather look at than read: precision–recall curves of detection tasks
(from the COCOeval precision array the evaluator keeps) and confusion matrices of
segmentation tasks, drawn with PIL (matplotlib is not a dependency of the project).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..tasks.base import Evaluator, jsonable
from ..tasks.drawing import colour


def format_report(evaluators: Mapping[str, Evaluator]) -> str:
    return "\n\n".join(ev.report() for ev in evaluators.values() if ev.report())


def format_skipped(entries: Sequence[Mapping[str, Any]], where: str = "") -> str:
    """The samples (and annotation entries) ``data.on_error=skip`` left out, one line each (file: reason)."""
    lines = [f"{len(entries)} sample(s) skipped{' ' + where if where else ''} because they failed to load "
             "(data.on_error=skip):"]
    lines += [f"  {e.get('file')}: {e.get('reason')}" for e in entries]
    return "\n".join(lines)


def save_pictures(evaluators: Mapping[str, Evaluator], out_dir: str | Path) -> list[Path]:
    """PR curves (evaluators with ``pr_curves``) and confusion matrices (with ``save_confusion_matrix``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for t, ev in evaluators.items():
        pr = getattr(ev, "pr_curves", None)
        if pr is not None:
            path = out_dir / f"{t}_pr_curves.png"
            pr_curves_image(pr).save(path)
            written.append(path)
        if hasattr(ev, "save_confusion_matrix"):
            written.append(Path(ev.save_confusion_matrix(out_dir / f"{t}_confusion_matrix.png")))
    return written


def write_eval_report(
    out: str | Path, results: Mapping[str, Mapping[str, float]], evaluators: Mapping[str, Evaluator], **info: Any
) -> list[Path]:
    """``metrics.json`` (``info`` + metrics + per-class figures) and the pictures into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_class = {}
    for t, ev in evaluators.items():
        pc = getattr(ev, "per_class", None)
        per_class[t] = pc() if callable(pc) else pc
    record = {**info, "metrics": results, "per_class": per_class}
    (out / "metrics.json").write_text(json.dumps(jsonable(record), indent=2))
    return [out / "metrics.json", *save_pictures(evaluators, out)]


def pr_curves_image(pr: Mapping[str, Any], size: int = 480):
    """Precision–recall at IoU 0.5 per class (thin) and their mean (thick), drawn with PIL.

    ``pr`` is what the detection evaluator keeps from COCOeval: precision (iou, recall,
    class) with -1 where a class has no ground truth, the recall thresholds, the class names.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    prec = np.asarray(pr["precision"], dtype=np.float64)[0]  # IoU 0.5: (recall, class)
    recall = np.asarray(pr["recall"], dtype=np.float64)
    names = list(pr["classes"])
    font = ImageFont.load_default()
    legend_w = max([int(font.getlength(n)) for n in names] + [60]) + 30
    m, w, h = 40, size, size
    img = Image.new("RGB", (w + legend_w, h), "white")
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = m, 10, w - 10, h - m

    def xy(r, p):
        return x0 + r * (x1 - x0), y1 - p * (y1 - y0)

    for k in range(11):  # grid and ticks every 0.1
        v = k / 10
        d.line([xy(v, 0), xy(v, 1)], fill=(230, 230, 230))
        d.line([xy(0, v), xy(1, v)], fill=(230, 230, 230))
        d.text((xy(v, 0)[0] - 6, y1 + 4), f"{v:.1f}", fill="black", font=font)
        d.text((4, xy(0, v)[1] - 6), f"{v:.1f}", fill="black", font=font)
    d.rectangle([x0, y0, x1, y1], outline="black")
    d.text(((x0 + x1) / 2 - 15, h - 16), "recall", fill="black", font=font)
    d.text((x0 + 4, y0 + 2), "precision (IoU 0.5)", fill="black", font=font)
    valid = []
    for k, name in enumerate(names):
        p = prec[:, k]
        if (p < 0).all():
            continue
        valid.append(np.clip(p, 0, 1))
        d.line([xy(r, v) for r, v in zip(recall, np.clip(p, 0, 1))], fill=colour(k), width=1)
        ly = 14 + 14 * (len(valid) - 1)
        d.line([(w + 4, ly + 6), (w + 20, ly + 6)], fill=colour(k), width=3)
        d.text((w + 24, ly), f"{name} {np.mean(np.clip(p, 0, 1)) * 100:.1f}", fill="black", font=font)
    if valid:
        mean = np.mean(valid, axis=0)
        d.line([xy(r, v) for r, v in zip(recall, mean)], fill="black", width=3)
        ly = 14 + 14 * len(valid)
        d.line([(w + 4, ly + 6), (w + 20, ly + 6)], fill="black", width=3)
        d.text((w + 24, ly), f"mean {mean.mean() * 100:.1f}", fill="black", font=font)
    return img
