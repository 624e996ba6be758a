"""Run the tasks' evaluators over validation data, on one or many processes.

Each process evaluates a disjoint shard (``ShardSampler``: no padding, so no image counts
twice) and every evaluator's ``sync`` merges the shards before ``compute`` — so the metric
of a ``torchrun`` evaluation equals the single-process one. Predictions come from the one
inference path (engine/inference.py), the same as ``mtedet predict``'s. Under
``data.on_error=skip`` a bad image (or one whose annotation file is bad) is replaced by the
next valid one; that replacement is dropped here, since the same image is also evaluated at its
own index. A skipped image is in no evaluator's ground truth and has no prediction, so it is
not scored at all (not a miss); it is listed in ``skipped`` (``evaluate(skipped=[])``) with
its file and reason, together with the annotation entries an adapter left out when it read
the split (COCO's ``problems``). A split with no image to score is an error, never a metric.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..datasets.base import collate
from ..errors import ConfigError, DatasetError
from ..tasks.base import Evaluator, Task
from .distributed import ShardSampler, all_gather_object
from .inference import predict_batch


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
    skipped: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, Evaluator]]:
    """``eval_sets``: (dataset with eval transforms, task names to score on it).

    Returns ``{task: metrics}`` and the evaluators (for their reports and pictures).
    ``skipped``: a list that receives what ``data.on_error=skip`` left out, from every process
    (per entry: dataset, file, reason).
    """
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, float]] = {}
    evaluators: dict[str, Evaluator] = {}
    try:
        for dataset, names in eval_sets:
            evs = {}
            for t in names:
                out = Path(output_dir) / t if output_dir is not None else None
                evs[t] = tasks[t].evaluator(dataset, str(out) if out else None)
                evs[t].reset()
            scored = {t: tasks[t] for t in evs}
            size = len(dataset) if max_images is None else min(len(dataset), max_images)
            if size == 0:
                raise DatasetError(f"{_describe(dataset)} has no images to evaluate; check the split's list "
                                   "or annotation file (data.val_split, --split)")
            left_out: dict[str, dict[str, Any]] = {}
            loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(size), collate_fn=collate,
                                num_workers=workers)
            it = loader
            if progress:
                from tqdm import tqdm

                it = tqdm(loader, desc=f"eval {getattr(dataset, 'name', '')}", leave=False)
            seen = 0
            for batch in it:
                for meta in batch.get("meta") or []:
                    for entry in (meta or {}).get("skipped") or []:
                        left_out.setdefault(str(entry.get("file")), entry)
                batch = drop_replacements(batch)
                if batch is None:
                    continue
                seen += len(batch["images"])
                preds = predict_batch(model, scored, batch, device, amp_dtype)
                for t, ev in evs.items():
                    ev.update(preds[t], batch)
            left = _left_out(dataset, left_out)
            if sum(all_gather_object(seen)) == 0:
                raise DatasetError(f"{_describe(dataset)}: no image could be evaluated, all {len(left)} failed to load "
                                   f"(first: {left[0]['file']}: {left[0]['reason']})" if left else
                                   f"{_describe(dataset)}: no image could be evaluated")
            if skipped is not None:
                skipped.extend(left)
            for t, ev in evs.items():
                ev.sync()
                results[t] = {k: float(v) for k, v in ev.compute().items()}
                evaluators[t] = ev
    finally:
        model.train(was_training)
    return results, evaluators


def _describe(dataset) -> str:
    return f"dataset {getattr(dataset, 'name', type(dataset).__name__)!r} ({dataset!r})"


def _left_out(dataset, loaded: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """What this evaluation left out, merged over processes: bad samples and bad annotation entries."""
    mine = dict(loaded)
    for entry in getattr(dataset, "skipped", []):  # recorded in this process (ground truth, workers=0)
        mine.setdefault(str(entry["file"]), entry)
    merged: dict[str, dict[str, Any]] = {}
    for part in all_gather_object(mine):
        merged.update(part)
    name = getattr(dataset, "name", "")
    out = [{"dataset": name, "file": e["file"], "reason": e["reason"]} for _, e in sorted(merged.items())]
    out += [{"dataset": name, "file": p["file"], "reason": p["reason"]} for p in getattr(dataset, "problems", [])]
    return out


def evaluate_trained(
    trained,
    *,
    device: torch.device,
    split: str | None = None,
    batch_size: int | None = None,
    max_images: int | None = None,
    output_dir: str | Path | None = None,
    progress: bool = False,
    skipped: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, Evaluator]]:
    """Score a trained model (``builders.load_trained``) on its config's dataset and val split (or ``split``).

    What ``mtedet eval`` and ``Experiment.evaluate`` both run: same data, same batches, same
    autocast (``train.amp``), so the same checkpoint gives the same metrics either way.
    """
    from .builders import amp_dtype_for, build_eval_sets

    cfg = trained.config
    eval_sets, names = build_eval_sets(cfg, split)
    for t, n in names.items():
        have = trained.class_names.get(t)
        if have is not None and list(n) != list(have):
            raise ConfigError(
                f"{cfg.data.dataset} ({t}) has classes {n[:6]}{'…' if len(n) > 6 else ''}, but the checkpoint was "
                f"trained on {have[:6]}{'…' if len(have) > 6 else ''}; evaluate on a dataset with the same classes"
            )
    return evaluate(
        trained.model, trained.tasks, eval_sets, device=device,
        batch_size=batch_size or cfg.eval.batch_size or cfg.train.batch_size, workers=cfg.data.workers,
        amp_dtype=amp_dtype_for(cfg.train.amp, device), max_images=max_images, output_dir=output_dir, progress=progress,
        skipped=skipped,
    )  # fmt: skip
