"""Run the tasks' evaluators over validation data, on one or many processes (issue 5 items 5–6).

Each process evaluates a disjoint shard (``ShardSampler``: no padding, so no image counts
twice) and every evaluator's ``sync`` merges the shards before ``compute`` — so the metric
of a ``torchrun`` evaluation equals the single-process one. Under ``data.on_error=skip`` a
bad image is replaced by the next valid one; that replacement is dropped here, since the
same image is also evaluated at its own index.
"""
from __future__ import annotations

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
    written = []
    for t, ev in evaluators.items():
        for method, name in (("save_pr_curves", f"{t}_pr_curves.png"), ("save_confusion_matrix", f"{t}_confusion_matrix.png")):
            fn = getattr(ev, method, None)
            if fn is not None:
                written.append(Path(fn(out_dir / name)))
    return written
