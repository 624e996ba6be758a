"""A training run: ``run_training(cfg)`` is what ``mtedet train`` and ``Experiment.train`` call.

It builds the parts (engine/builders.py), wires the hooks (EMA → LR schedule → evaluation and
best.pt → last.pt → logging, engine/hooks.py) around the trainer (engine/trainer.py) and
runs it, single-process or under torchrun.

The run folder (engine/run_folder.py) is owned by this run from the start: a second training
on the same folder is refused at once, naming the process that holds it. Nothing is written
into it until the run is decided — data and model built, a ``--resume`` checkpoint loaded into
them — so a refused command changes nothing there; the decision (``commit``) writes
config.yaml and removes the temporary files a killed save left. A run that then ends before
its first step completed removes what it wrote, so the same command can simply run again.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config_utils import to_dict
from ..datasets.base import collate
from ..datasets.mixed import MixedBatchSampler, MixedDataset
from ..errors import ConfigError, RunFolderBusyError
from .builders import Data, amp_dtype_for, build_data, build_model, build_optimizer, build_tasks, seed_everything
from .checkpoint import atomic_write
from .checkpointer import Checkpointer
from .config import ExperimentConfig
from .distributed import (
    DistInfo, ResumableLoader, all_gather_object, broadcast_module_state, convert_sync_bn, env_dist_info, init_distributed,
    is_main_process, resolve_device, unwrap, wrap_model,
)  # fmt: skip
from .evaluate import evaluate
from .finetune import FreezeStepsHook, freeze_batch_norm, set_bn_momentum
from .hooks import CheckpointHook, EMAHook, EvalHook, LRSchedulerHook, MetricsLogger
from .param_groups import apply_freeze, frozen_tasks
from .reports import format_skipped
from .run_folder import RunFolder
from .schedule import build_scheduler, scaled_lr
from .trainer import Trainer
from .weighting import build_weighting

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- run folder

def check_run_dir(cfg: ExperimentConfig, resume: bool) -> Path:
    """The run folder; a finished or interrupted run is never overwritten by a new one."""
    run_dir = cfg.run_dir()
    if not resume and (run_dir / "last.pt").exists():
        raise ConfigError(
            f"run folder {run_dir} already holds a training (last.pt); continue it with --resume, "
            "or choose another --output"
        )
    return run_dir


def own_run_dir(cfg: ExperimentConfig) -> RunFolder | None:
    """Rank 0 takes the run folder (``RunFolder.acquire``); the other ranks get None.

    Every rank learns whether rank 0 got it, so all of them stop with its error together
    instead of waiting for rank 0 at the first collective call.
    """
    folder, failure = None, None
    if is_main_process():
        try:
            folder = RunFolder(cfg.run_dir()).acquire()
        except Exception as e:  # noqa: BLE001 — re-raised below, after the other ranks heard of it
            failure = e
    outcome = all_gather_object(None if failure is None else str(failure))[0]
    if failure is not None:
        raise failure
    if outcome is not None:
        raise RunFolderBusyError(f"rank 0 could not take the run folder: {outcome}")
    return folder


#: the first line of a run's config.yaml: where its initial weights came from (a YAML comment)
WEIGHTS_HEADER = "# initial weights: "


def commit_run_dir(cfg: ExperimentConfig, folder: RunFolder | None, weights: str | None = None) -> Path:
    """The run is decided: write the resolved config and remove stale temp files (rank 0).

    ``weights`` (where the initial weights came from) heads config.yaml as a comment, so the
    run folder says which weights a run started from — the Hub file, a local file, a
    checkpoint or a random initialisation — not only that ``pretrained`` was true. A resumed
    run (``weights`` None) keeps the line its first start wrote.
    """
    if folder is not None:
        removed = folder.commit()
        if removed:
            print(f"removed {len(removed)} temporary file(s) that an interrupted save left in {folder.path}: "
                  + ", ".join(p.name for p in removed), flush=True)
        header = f"{WEIGHTS_HEADER}{weights}\n" if weights else _weights_header(folder.path / "config.yaml")
        folder.write_text("config.yaml", header + cfg.to_yaml())
    return cfg.run_dir()


def _weights_header(config_yaml: Path) -> str:
    """The initial-weights line of an existing config.yaml, or nothing."""
    try:
        first = config_yaml.read_text().split("\n", 1)[0]
    except (OSError, UnicodeDecodeError):
        return ""
    return first + "\n" if first.startswith(WEIGHTS_HEADER) else ""


# ---------------------------------------------------------------------------- training

@dataclass
class TrainResult:
    run_dir: Path
    step: int
    epoch: int
    stop_reason: str | None
    metrics: dict[str, dict[str, float]]
    best: float | None
    skipped: list[dict[str, Any]]


def run_training(cfg: ExperimentConfig, resume: str | Path | None = None, dist_info: DistInfo | None = None) -> TrainResult:
    """Train as configured; ``resume``: a checkpoint to continue from (config taken as given)."""
    info = dist_info or env_dist_info()
    device = resolve_device(cfg.train.device, info)
    info = init_distributed(device, info)
    folder = own_run_dir(cfg)
    try:
        return _run(cfg, resume, info, device, folder)
    finally:
        if folder is not None:
            folder.release()  # before commit(): also removes the lock file and a folder acquire() made


def _run(cfg: ExperimentConfig, resume: str | Path | None, info: DistInfo, device: torch.device,
         folder: RunFolder | None) -> TrainResult:
    run_dir = check_run_dir(cfg, resume is not None)
    seed_everything(cfg.train.seed)

    data = build_data(cfg)
    # a resumed run loads every weight from its checkpoint: no initial weights to fetch or read
    model = build_model(cfg, data.class_names, initial_weights=resume is None).to(device)
    tasks = build_tasks(model, data.class_names)
    model = convert_sync_bn(model, device) if cfg.train.sync_bn else model
    apply_freeze(model, cfg.train.freeze)
    set_bn_momentum(model, cfg.train.bn_momentum)
    freeze_batch_norm(model, cfg.train.frozen_bn)
    loss_tasks = [t for t in cfg.tasks if t not in frozen_tasks(model, cfg.train.freeze)]
    if not loss_tasks:
        raise ConfigError(f"train.freeze {cfg.train.freeze} freezes every task's head: nothing would be trained")
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # per-rank stochasticity (drop-path) after identical initialisation
    seed_everything(cfg.train.seed + info.rank)

    t = cfg.train
    loader = _train_loader(cfg, data, info, device)
    steps_per_epoch = len(loader)
    max_steps = t.max_steps or t.epochs * steps_per_epoch
    lr = t.lr if t.lr is not None else scaled_lr(t.base_lr, t.batch_size * info.world_size, t.base_batch)
    weighting = build_weighting(t.loss_weighting, loss_tasks, t.loss_weights, **t.loss_weighting_options).to(device)
    optimizer = build_optimizer(cfg, model, weighting, lr)
    scheduler = build_scheduler(optimizer, max_steps, round(t.warmup_epochs * steps_per_epoch), t.warmup_factor, t.min_lr_factor)
    amp_dtype = amp_dtype_for(t.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 and device.type == "cuda" else None
    ema = None
    if t.ema:
        from timm.utils.model_ema import ModelEmaV3

        ema = ModelEmaV3(model, decay=t.ema_decay, use_warmup=t.ema_warmup)
    ddp_model = wrap_model(model, device, t.find_unused_parameters)

    trainer = Trainer(
        ddp_model, tasks, optimizer, loader, device=device, max_steps=max_steps, weighting=weighting, scaler=scaler,
        amp_dtype=amp_dtype, clip_grad_norm=t.clip_grad_norm, channels_last=cfg.model.channels_last,
        max_nonfinite=t.max_nonfinite, loss_tasks=loss_tasks,
    )  # fmt: skip
    eval_skipped: dict[str, dict[str, Any]] = {}
    checkpointer, eval_hook = _attach_hooks(cfg, trainer, run_dir, data, scheduler, ema, amp_dtype, info, eval_skipped)
    if resume is not None:
        _resume(checkpointer, scheduler, resume)  # a checkpoint that does not fit is refused here: nothing written yet
    weights = _weights_source(cfg, model, resume)
    commit_run_dir(cfg, folder, None if resume is not None else weights)
    if is_main_process():
        print(f"training {'+'.join(cfg.tasks)} on {cfg.data.dataset}: {len(data.train)} images, "
              f"{steps_per_epoch} steps/epoch, {max_steps} steps, lr {lr:.4g} at global batch "
              f"{t.batch_size * info.world_size}, device {device}, run folder {run_dir}", flush=True)
        print(f"initial weights: {weights}", flush=True)
    start = trainer.step
    try:
        trainer.train()
    finally:
        if folder is not None and trainer.step == start:
            # not one step completed: what this run wrote (config.yaml, an empty metrics.jsonl ...)
            # would only stand in the way of running the same command again
            folder.abandon()
    skipped = _report_skipped(trainer, run_dir, data, list(eval_skipped.values()))
    best = eval_hook.best if eval_hook.best_step >= 0 else None
    return TrainResult(run_dir, trainer.step, trainer.epoch, trainer.stop_reason, eval_hook.last_results, best, skipped)


def _attach_hooks(cfg: ExperimentConfig, trainer: Trainer, run_dir: Path, data: Data, scheduler, ema, amp_dtype,
                  info: DistInfo, eval_skipped: dict[str, dict[str, Any]]) -> tuple[Checkpointer, EvalHook]:
    """EMA → LR schedule → evaluation (+ best.pt) → last.pt → logging, in that order.

    ``eval_skipped`` collects what the evaluations left out under ``data.on_error=skip`` (by file).
    """
    t = cfg.train
    checkpointer = Checkpointer(run_dir, trainer=trainer, scheduler=scheduler, ema=ema, config=cfg.to_dict(),
                                class_names=data.class_names, model_config=to_dict(unwrap(trainer.model).config))
    logger = MetricsLogger(run_dir, cfg.log.every_steps, cfg.log.tensorboard, cfg.log.progress,
                           global_batch=t.batch_size * info.world_size)

    def eval_fn():
        net = ema.module if (ema is not None and cfg.eval.use_ema) else unwrap(trainer.model)
        broadcast_module_state(net)  # every shard scored with rank 0's weights and BN statistics
        skipped: list[dict[str, Any]] = []
        out = evaluate(net, trainer.tasks, data.eval_sets, device=trainer.device,
                       batch_size=cfg.eval.batch_size or t.batch_size, workers=cfg.data.workers, amp_dtype=amp_dtype,
                       max_images=cfg.eval.max_images, skipped=skipped)
        for entry in skipped:
            eval_skipped.setdefault(str(entry["file"]) + "\0" + entry["reason"], {**entry, "split": cfg.data.val_split})
        return out

    eval_hook = EvalHook(eval_fn, cfg.tasks[0], checkpointer, logger, cfg.eval.every_epochs, cfg.eval.every_steps,
                         report_dir=run_dir / "eval")
    checkpointer.extra_state["eval"] = eval_hook
    hooks = [EMAHook(ema)] if ema is not None else []
    hooks += [LRSchedulerHook(scheduler)]
    if t.freeze_steps:  # after the scheduler, which sets every group's rate each step
        hooks.append(FreezeStepsHook(trainer.model, t.freeze_steps))
    hooks += [eval_hook, CheckpointHook(checkpointer, t.checkpoint_every_steps), logger]
    trainer.register_hooks(hooks)
    return checkpointer, eval_hook


def _weights_source(cfg: ExperimentConfig, model, resume: str | Path | None) -> str:
    """Where the run's weights came from, for the run log."""
    if resume is not None:
        return f"resumed from {resume}"
    backbone = unwrap(model).backbone.weights_source
    if not cfg.model.checkpoint:
        return f"backbone: {backbone}; BiFPN and heads: random initialisation"
    if cfg.model.checkpoint_strict:
        return f"checkpoint {cfg.model.checkpoint}"
    return f"checkpoint {cfg.model.checkpoint} where it fits; elsewhere backbone: {backbone}, other layers: random"


def _resume(checkpointer: Checkpointer, scheduler, path: str | Path) -> None:
    trainer = checkpointer.trainer
    ckpt = checkpointer.resume(path)
    saved_max = ckpt["state"].get("max_steps", trainer.max_steps)
    if saved_max != trainer.max_steps:
        # a run extended (or shortened) on resume: the cosine now ends at the new last step
        log.warning("resuming with %d total steps instead of %d: the LR schedule is stretched to the new end",
                    trainer.max_steps, saved_max)
        for fn in scheduler.lr_lambdas:
            fn.total_steps = trainer.max_steps
    log.info("resumed from %s at step %d (epoch %d, iteration %d)", path, trainer.step, trainer.epoch,
             trainer.iter_in_epoch)


def _train_loader(cfg: ExperimentConfig, data: Data, info: DistInfo, device: torch.device) -> ResumableLoader:
    t = cfg.train
    batch_sampler = None
    if isinstance(data.train, MixedDataset):
        batch_sampler = MixedBatchSampler.for_dataset(data.train, t.batch_size, cfg.data.mix_ratio, seed=t.seed)
    return ResumableLoader(data.train, t.batch_size, collate_fn=collate, seed=t.seed, workers=cfg.data.workers,
                           batch_sampler=batch_sampler, pin_memory=device.type == "cuda")


def _report_skipped(trainer: Trainer, run_dir: Path, data: Data, evaluation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What on_error=skip left out, printed and written to skipped.json: training samples (from
    every rank), the annotation entries a dataset dropped when it read the training split, and
    what the evaluations left out (``evaluation``, marked with their split)."""
    merged: dict[str, dict[str, Any]] = {}
    for part in all_gather_object(trainer.skipped_samples):
        merged.update(part)
    skipped = [merged[k] for k in sorted(merged)]
    train_sets = data.train.sources if isinstance(data.train, MixedDataset) else [data.train]
    for ds in dict.fromkeys(train_sets):
        skipped += [{"file": p["file"], "reason": p["reason"]} for p in getattr(ds, "problems", [])]
    skipped += evaluation
    if skipped and is_main_process():
        atomic_write(run_dir / "skipped.json", lambda tmp: Path(tmp).write_text(json.dumps(skipped, indent=2)))
        print(format_skipped(skipped), flush=True)
    return skipped


__all__ = ["TrainResult", "check_run_dir", "commit_run_dir", "own_run_dir", "run_training"]
