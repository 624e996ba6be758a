"""Run the tasks' evaluators over validation data, on one or many processes (issue 5 items 5–6).

Each process evaluates a disjoint shard (``ShardSampler``: no padding, so no image counts
twice) and every evaluator's ``sync`` merges the shards before ``compute`` — so the metric
of a ``torchrun`` evaluation equals the single-process one. Under ``data.on_error=skip`` a
bad image is replaced by the next valid one; that replacement is dropped here, since the
same image is also evaluated at its own index.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..datasets.base import collate, normalize_images
from ..tasks.base import Evaluator, Task
from .distributed import ShardSampler
from .trainer import autocast, to_float


def drop_replacements(batch: dict[str, Any]) -> dict[str, Any] | None:
    """The batch without samples that stand in for a skipped one (None if nothing is left)."""
    metas = batch.get("meta") or []
    keep = [i for i, m in enumerate(metas) if not (m or {}).get("skipped")]
    if len(keep) == len(batch["images"]):
        return batch
    if not keep:
        return None
    out: dict[str, Any] = {"images": batch["images"][keep]}
    for k, v in batch.items():
        if k != "images":
            out[k] = [v[i] for i in keep]
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tasks: Mapping[str, Task],
    eval_sets: Sequence[tuple[Any, Sequence[str]]],
    *,
    device: torch.device,
    batch_size: int = 8,
    workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    max_images: int | None = None,
    output_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[dict[str, dict[str, float]], dict[str, Evaluator]]:
    """``eval_sets``: (dataset with eval transforms, task names to score on it).

    Returns ``{task: metrics}`` and the evaluators (for their reports and pictures).
    """
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, float]] = {}
    evaluators: dict[str, Evaluator] = {}
    try:
        for dataset, names in eval_sets:
            evs = {}
            for t in names:
                out = Path(output_dir) / t if output_dir is not None and t != "seg" else None
                evs[t] = tasks[t].evaluator(dataset, str(out) if out else None)
                evs[t].reset()
            size = len(dataset) if max_images is None else min(len(dataset), max_images)
            loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(size), collate_fn=collate,
                                num_workers=workers)
            it = loader
            if progress:
                from tqdm import tqdm

                it = tqdm(loader, desc=f"eval {getattr(dataset, 'name', '')}", leave=False)
            for batch in it:
                batch = drop_replacements(batch)
                if batch is None:
                    continue
                images = normalize_images(batch["images"], device)
                with autocast(device, amp_dtype):
                    outputs = model(images)
                outputs = to_float(outputs)
                for t, ev in evs.items():
                    ev.update(tasks[t].postprocess(outputs[t], batch), batch)
            for t, ev in evs.items():
                ev.sync()
                results[t] = {k: float(v) for k, v in ev.compute().items()}
                evaluators[t] = ev
    finally:
        model.train(was_training)
    return results, evaluators


def format_report(evaluators: Mapping[str, Evaluator]) -> str:
    return "\n\n".join(ev.report() for ev in evaluators.values() if ev.report())


def save_pictures(evaluators: Mapping[str, Evaluator], out_dir: str | Path) -> list[Path]:
    """Pictures a person would rather look at than read: PR curves (det), confusion matrix (seg)."""
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


def _jsonable(x: Any) -> Any:
    import numpy as np

    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return x


def run_evaluation(
    checkpoint: str | Path,
    *,
    dataset: str | None = None,
    split: str | None = None,
    root: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    workers: int | None = None,
    output: str | Path | None = None,
    max_images: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """``mtedet eval``: score a checkpoint on a split (its run's dataset and val split by default).

    Prints the tables, writes ``metrics.json`` and pictures to ``output`` (default: a folder
    next to the checkpoint). Runs distributed under torchrun like training.
    """
    import json

    from ..errors import ConfigError
    from .build import amp_dtype_for, build_eval_sets, load_trained
    from .config import deep_merge
    from .distributed import env_dist_info, init_distributed, is_main_process, resolve_device

    info = env_dist_info()
    dev = resolve_device(device, info)
    init_distributed(dev, info)
    data: dict[str, Any] = {}
    if dataset:
        data["dataset"] = dataset
    if root:
        data["root"] = str(root)
    if split:
        data["val_split"] = split
    if workers is not None:
        data["workers"] = workers
    trained = load_trained(checkpoint, deep_merge({"data": data}, dict(overrides or {})), dev)
    cfg = trained.config
    eval_sets, names = build_eval_sets(cfg)
    for t, n in names.items():
        if t in trained.class_names and list(n) != list(trained.class_names[t]):
            raise ConfigError(
                f"{cfg.data.dataset} ({t}) has classes {n[:6]}{'…' if len(n) > 6 else ''}, but the checkpoint was "
                f"trained on {trained.class_names[t][:6]}{'…' if len(trained.class_names[t]) > 6 else ''}; "
                "evaluate on a dataset with the same classes"
            )
    out = Path(output) if output else Path(checkpoint).parent / f"eval-{cfg.data.dataset}-{cfg.data.val_split}"
    results, evaluators = evaluate(
        trained.model, trained.tasks, eval_sets, device=dev, batch_size=batch_size or cfg.eval.batch_size or cfg.train.batch_size,
        workers=cfg.data.workers, amp_dtype=amp_dtype_for(cfg.train.amp, dev), max_images=max_images,
        output_dir=out if is_main_process() else None, progress=is_main_process() and sys.stderr.isatty(),
    )
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        print(format_report(evaluators))
        per_class = {}
        for t, ev in evaluators.items():
            pc = getattr(ev, "per_class", None)
            per_class[t] = pc() if callable(pc) else pc
        record = {"checkpoint": str(checkpoint), "dataset": cfg.data.dataset, "split": cfg.data.val_split,
                  "metrics": results, "per_class": per_class}
        (out / "metrics.json").write_text(json.dumps(_jsonable(record), indent=2))
        pictures = save_pictures(evaluators, out)
        print(f"wrote {out / 'metrics.json'}" + "".join(f", {p}" for p in pictures))
    return results


def pr_curves_image(pr: Mapping[str, Any], size: int = 480):
    """Precision–recall at IoU 0.5 per class (thin) and their mean (thick), drawn with PIL.

    ``pr`` is what the detection evaluator keeps from COCOeval: precision (iou, recall,
    class) with -1 where a class has no ground truth, the recall thresholds, the class names.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from .predict import colour

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
