"""``mtedet eval``: a checkpoint scored on a split, with its tables, metrics.json and pictures.

A thin layer over ``evaluate_trained`` (the computation ``Experiment.evaluate`` runs too) and
engine/reports.py; it runs distributed under torchrun like training.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from .builders import load_for_inference
from ..errors import CheckpointError
from .config import deep_merge
from .distributed import env_dist_info, init_distributed, is_main_process, resolve_device
from .evaluate import evaluate_trained
from .reports import format_report, format_skipped, write_eval_report


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
    """Score a checkpoint on a split (its run's dataset and val split by default).

    Prints the tables, writes ``metrics.json`` and pictures to ``output`` (default: a folder
    next to the checkpoint). Under ``data.on_error=skip`` what was left out is printed and
    listed in ``metrics.json`` ("skipped").
    """
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
    trained = load_for_inference(checkpoint, deep_merge({"data": data}, dict(overrides or {})), dev)
    cfg = trained.config
    if cfg is None:
        raise CheckpointError(f"{checkpoint} holds a model saved without the config of a training run, which names "
                              "the dataset and its evaluation; evaluate a run's checkpoint or folder")
    src = Path(checkpoint)
    # next to a checkpoint file, inside a run folder, in the working folder for a Hub repository
    base = src if src.is_dir() else src.parent if src.is_file() else Path(".")
    out = Path(output) if output else base / f"eval-{cfg.data.dataset}-{cfg.data.val_split}"
    main = is_main_process()
    skipped: list[dict[str, Any]] = []
    results, evaluators = evaluate_trained(
        trained, device=dev, batch_size=batch_size, max_images=max_images, output_dir=out if main else None,
        progress=main and sys.stderr.isatty(), skipped=skipped,
    )  # fmt: skip
    if main:
        print(format_report(evaluators))
        if skipped:
            print(format_skipped(skipped, f"in the evaluation of {cfg.data.dataset} {cfg.data.val_split} (not scored)"))
        written = write_eval_report(out, results, evaluators, checkpoint=str(checkpoint), dataset=cfg.data.dataset,
                                    split=cfg.data.val_split, skipped=skipped)
        print("wrote " + ", ".join(str(p) for p in written))
    return results
