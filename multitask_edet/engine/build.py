"""From an ExperimentConfig to a running training: datasets, model, tasks, optimizer, hooks.

``run_training(cfg)`` is what ``mtedet train`` (and the Python API) calls. The pieces are
separate functions so that evaluation, prediction and export rebuild exactly the model a
checkpoint was trained as (``build_model`` + ``build_tasks`` from the saved config).
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..datasets import build_dataset, default_data_root
from ..datasets.base import collate
from ..datasets.mixed import MixedBatchSampler, MixedDataset, parse_dataset_spec
from ..datasets.transforms import eval_transforms, train_transforms
from ..errors import ConfigError, DatasetError
from ..models.factory import create_model
from ..tasks.base import TASKS, Task
from .checkpoint import atomic_write
from .config import ExperimentConfig, config_from_dict, deep_merge
from .distributed import (
    DistInfo, ResumableLoader, all_gather_object, broadcast_module_state, convert_sync_bn, env_dist_info, init_distributed,
    is_main_process, resolve_device, unwrap, wrap_model,
)  # fmt: skip
from .evaluate import evaluate
from .finetune import FreezeStepsHook, freeze_batch_norm, set_bn_momentum
from .hooks import Checkpointer, CheckpointHook, EMAHook, EvalHook, LRSchedulerHook, MetricsLogger
from .param_groups import apply_freeze, build_param_groups, frozen_tasks
from .schedule import build_scheduler, scaled_lr
from .trainer import Trainer
from .weighting import build_weighting

log = logging.getLogger(__name__)

BUILTIN_TASKS = ("det", "seg")


# ---------------------------------------------------------------------------- basics

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on GPUs that support it, else fp16; fp32 on CPU unless asked."""
    if amp == "fp32" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def data_root(cfg: ExperimentConfig) -> Path:
    return Path(cfg.data.root) if cfg.data.root else default_data_root()


def image_size_of(cfg: ExperimentConfig) -> tuple[int, int]:
    if cfg.model.image_size is not None:
        return tuple(cfg.model.image_size)  # type: ignore[return-value]
    from ..models.factory import resolve_config

    return tuple(resolve_config(cfg.model.name).image_size)  # type: ignore[return-value]


def default_train_split(name: str, tasks: Sequence[str], root: Path, options: Mapping[str, Any]) -> str:
    """``train``; for segmentation on VOC 2012, ``train_aug`` when SBD is found (paper §5.2)."""
    if name == "voc2012" and "seg" in tasks:
        from ..datasets.voc import find_sbd_dir, find_voc_dir

        try:
            find_sbd_dir(root, find_voc_dir(root, "2012"), options.get("sbd_root"))
            return "train_aug"
        except DatasetError:
            log.info("SBD not found under %s: training segmentation on VOC 2012 'train' (not train_aug)", root)
    if name in ("voc2007", "voc0712"):
        return "trainval"
    return "train"


# ---------------------------------------------------------------------------- data

@dataclass
class Data:
    train: Any
    #: (dataset with eval transforms, tasks scored on it)
    eval_sets: list[tuple[Any, list[str]]]
    class_names: dict[str, list[str]]
    #: task → dataset name
    sources: dict[str, str] = field(default_factory=dict)


def _dataset_tasks(tasks: Sequence[str]) -> list[str]:
    return [t for t in tasks if t in BUILTIN_TASKS] or list(BUILTIN_TASKS[:1])


def build_eval_sets(cfg: ExperimentConfig, split: str | None = None) -> tuple[list[tuple[Any, list[str]]], dict[str, list[str]]]:
    """Validation datasets (eval transforms) for every task, and their class names."""
    tasks = list(cfg.tasks)
    spec = parse_dataset_spec(cfg.data.dataset, _dataset_tasks(tasks))
    root = data_root(cfg)
    tf = eval_transforms(image_size_of(cfg))
    split = split or cfg.data.val_split
    opts = dict(cfg.data.options, on_error=cfg.data.on_error)
    groups: dict[str, list[str]] = {}
    for t, name in spec.items():
        groups.setdefault(name, []).append(t)
    sets, names = [], {}
    for name, ts in groups.items():
        ds = build_dataset(name, root, split, ts, tf, **opts)
        scored = ts + ([t for t in tasks if t not in BUILTIN_TASKS] if len(groups) == 1 else [])
        sets.append((ds, scored))
        for t in ts:
            names[t] = list(ds.class_names[t])
    return sets, names


def build_data(cfg: ExperimentConfig) -> Data:
    tasks = _dataset_tasks(cfg.tasks)
    spec = parse_dataset_spec(cfg.data.dataset, tasks)
    root = data_root(cfg)
    size = image_size_of(cfg)
    d = cfg.data
    tf_opts = {"hflip": d.hflip, "color_jitter": d.color_jitter}
    if d.scale_range is not None:
        tf_opts["scale_range"] = d.scale_range
    opts = dict(d.options, on_error=d.on_error, seed=cfg.train.seed)
    if len(set(spec.values())) == 1:
        name = next(iter(spec.values()))
        split = d.train_split or default_train_split(name, tasks, root, d.options)
        train = build_dataset(name, root, split, tasks, train_transforms(size, tasks, **tf_opts), **opts)
    else:
        sources = {}
        for t, name in spec.items():
            split = d.train_split or default_train_split(name, [t], root, d.options)
            sources[t] = build_dataset(name, root, split, [t], train_transforms(size, tasks, **tf_opts), **opts)
        train = MixedDataset(sources)
    if len(train) == 0:
        raise DatasetError(f"the training split of {d.dataset} under {root} has no images")
    eval_sets, _ = build_eval_sets(cfg)
    class_names = {t: list(train.class_names[t]) for t in tasks}
    return Data(train, eval_sets, class_names, dict(spec))


# ---------------------------------------------------------------------------- model and tasks

def model_overrides(cfg: ExperimentConfig, class_names: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    m = cfg.model
    out: dict[str, Any] = {}
    for part in ("backbone", "neck"):
        if getattr(m, part):
            out[part] = dict(getattr(m, part))
    for t in ("det", "seg"):
        head = dict(getattr(m, t))
        if t in cfg.tasks and t in class_names and "num_classes" not in head:
            head["num_classes"] = len(class_names[t])
        if head:
            out[t] = head
    if m.image_size is not None:
        out["image_size"] = tuple(m.image_size)
    return out


def build_model(cfg: ExperimentConfig, class_names: Mapping[str, Sequence[str]], checkpoint: str | None = None) -> nn.Module:
    ckpt = checkpoint if checkpoint is not None else cfg.model.checkpoint
    strict = checkpoint is not None or cfg.model.checkpoint_strict
    return create_model(
        cfg.model.name, tasks=tuple(cfg.tasks), checkpoint=ckpt, strict=strict, **model_overrides(cfg, class_names)
    )


def build_tasks(cfg: ExperimentConfig, model: nn.Module, class_names: Mapping[str, Sequence[str]]) -> dict[str, Task]:
    from ..tasks.detection import DetectionTask
    from ..tasks.segmentation import SegmentationTask

    mc = unwrap(model).config
    tasks: dict[str, Task] = {}
    for t in cfg.tasks:
        if t == "det":
            tasks[t] = DetectionTask(mc.det, cfg.det.loss, cfg.det.postprocess, class_names.get("det"), cfg.det.eval)
        elif t == "seg":
            tasks[t] = SegmentationTask(mc.seg, cfg.seg.loss, class_names.get("seg"), flip_test=cfg.seg.flip_test)
        else:
            try:
                tasks[t] = TASKS.get(t)()
            except KeyError as e:
                raise ConfigError(str(e.args[0])) from None
    return tasks


def build_optimizer(cfg: ExperimentConfig, model: nn.Module, weighting, lr: float) -> torch.optim.Optimizer:
    t = cfg.train
    groups = build_param_groups(model, lr, t.weight_decay, t.no_decay_bn_bias, t.lr_mult, own_groups=t.freeze_steps)
    groups += weighting.param_groups(lr)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=t.momentum)
    return torch.optim.AdamW(groups, lr=lr)


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


def prepare_run_dir(cfg: ExperimentConfig, resume: bool) -> Path:
    """Create the run folder and write the resolved config (rank 0)."""
    run_dir = check_run_dir(cfg, resume)
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", lambda tmp: Path(tmp).write_text(cfg.to_yaml()))
    return run_dir


def load_resume_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """The config a checkpoint was written with, with explicit ``overrides`` merged over it."""
    from .checkpoint import load_checkpoint

    saved = load_checkpoint(path).get("config")
    if not saved:
        raise ConfigError(f"checkpoint {path} carries no config; it was not written by `mtedet train`")
    return config_from_dict(deep_merge(saved, dict(overrides or {})))


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
    check_run_dir(cfg, resume is not None)
    seed_everything(cfg.train.seed)

    data = build_data(cfg)
    model = build_model(cfg, data.class_names).to(device)
    run_dir = prepare_run_dir(cfg, resume is not None)  # after the data and model are known to work
    tasks = build_tasks(cfg, model, data.class_names)
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
    checkpointer, eval_hook = _attach_hooks(cfg, trainer, run_dir, data, scheduler, ema, amp_dtype, info)
    if resume is not None:
        _resume(checkpointer, scheduler, resume)
    if is_main_process():
        print(f"training {'+'.join(cfg.tasks)} on {cfg.data.dataset}: {len(data.train)} images, "
              f"{steps_per_epoch} steps/epoch, {max_steps} steps, lr {lr:.4g} at global batch "
              f"{t.batch_size * info.world_size}, device {device}, run folder {run_dir}", flush=True)
        source = "checkpoint " + cfg.model.checkpoint if cfg.model.checkpoint else unwrap(model).backbone.weights_source
        print(f"initial weights: {source}", flush=True)
    trainer.train()
    skipped = _report_skipped(trainer, run_dir)
    best = eval_hook.best if eval_hook.best_step >= 0 else None
    return TrainResult(run_dir, trainer.step, trainer.epoch, trainer.stop_reason, eval_hook.last_results, best, skipped)


def _attach_hooks(cfg: ExperimentConfig, trainer: Trainer, run_dir: Path, data: Data, scheduler, ema, amp_dtype,
                  info: DistInfo) -> tuple[Checkpointer, EvalHook]:
    """EMA → LR schedule → evaluation (+ best.pt) → last.pt → logging, in that order."""
    t = cfg.train
    checkpointer = Checkpointer(run_dir, trainer=trainer, scheduler=scheduler, ema=ema, config=cfg.to_dict(),
                                class_names=data.class_names)
    logger = MetricsLogger(run_dir, cfg.log.every_steps, cfg.log.tensorboard, cfg.log.progress,
                           global_batch=t.batch_size * info.world_size)

    def eval_fn():
        net = ema.module if (ema is not None and cfg.eval.use_ema) else unwrap(trainer.model)
        broadcast_module_state(net)  # every shard scored with rank 0's weights and BN statistics
        return evaluate(net, trainer.tasks, data.eval_sets, device=trainer.device,
                        batch_size=cfg.eval.batch_size or t.batch_size, workers=cfg.data.workers, amp_dtype=amp_dtype,
                        max_images=cfg.eval.max_images)

    eval_hook = EvalHook(eval_fn, cfg.tasks[0], checkpointer, logger, cfg.eval.every_epochs, cfg.eval.every_steps,
                         report_dir=run_dir / "eval")
    checkpointer.extra_state["eval"] = eval_hook
    hooks = [EMAHook(ema)] if ema is not None else []
    hooks += [LRSchedulerHook(scheduler)] + ([FreezeStepsHook(trainer.model, t.freeze_steps)] if t.freeze_steps else [])
    hooks += [eval_hook, CheckpointHook(checkpointer, t.checkpoint_every_steps), logger]
    trainer.register_hooks(hooks)
    return checkpointer, eval_hook


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


def _report_skipped(trainer: Trainer, run_dir: Path) -> list[dict[str, Any]]:
    """Samples skipped under on_error=skip, from every rank: printed and written to skipped.json."""
    merged: dict[str, dict[str, Any]] = {}
    for part in all_gather_object(trainer.skipped_samples):
        merged.update(part)
    skipped = [merged[k] for k in sorted(merged)]
    if skipped and is_main_process():
        atomic_write(run_dir / "skipped.json", lambda tmp: Path(tmp).write_text(json.dumps(skipped, indent=2)))
        print(f"{len(skipped)} sample(s) skipped because they failed to load (data.on_error=skip):", flush=True)
        for s in skipped:
            print(f"  {s.get('file')}: {s.get('reason')}", flush=True)
    return skipped


__all__ = [
    "Data", "TrainResult", "amp_dtype_for", "build_data", "build_eval_sets", "build_model", "build_optimizer",
    "build_tasks", "check_run_dir", "data_root", "default_train_split", "image_size_of", "load_resume_config", "model_overrides",
    "prepare_run_dir", "run_training", "seed_everything", "Trained", "load_trained",
]  # fmt: skip


# ---------------------------------------------------------------------------- trained models

@dataclass
class Trained:
    """A trained model rebuilt from a checkpoint (``last.pt``/``best.pt``/``model.safetensors``)."""

    config: ExperimentConfig
    model: nn.Module
    tasks: dict[str, Task]
    class_names: dict[str, list[str]]


def load_trained(path: str | Path, overrides: Mapping[str, Any] | None = None, device: str | torch.device = "cpu") -> Trained:
    """The model a run trained (EMA weights when it has them), in eval mode on ``device``.

    ``overrides`` (nested dict) change the saved config, e.g. the dataset to evaluate on or
    post-processing options; the network itself must stay what was trained.
    """
    from ..errors import CheckpointError
    from .checkpoint import load_weights

    sd, info = load_weights(path)
    saved = info.get("config")
    if not saved:
        raise CheckpointError(f"{path} carries no experiment config; it was not written by `mtedet train`")
    # the initial-weights file of the training is not needed (and may be gone): weights come from sd
    # (nor are the backbone's pretrained weights: they are in sd too, and need no network)
    no_init = {"model": {"checkpoint": None, "backbone": {"pretrained": False, "weights": None}}}
    cfg = config_from_dict(deep_merge(deep_merge(saved, dict(overrides or {})), no_init))
    class_names = {k: list(v) for k, v in (info.get("class_names") or {}).items()}
    model = build_model(cfg, class_names)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"weights in {path} do not fit the model of its config: {str(e).splitlines()[0][:300]}") from None
    model.to(device).eval()
    return Trained(cfg, model, build_tasks(cfg, model, class_names), class_names)
