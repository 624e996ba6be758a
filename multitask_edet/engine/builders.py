"""From an ExperimentConfig to its parts: datasets, model, tasks, optimizer; and back from a checkpoint.

Training (engine/run.py), evaluation, prediction and export all build through these
functions, so a checkpoint is rebuilt exactly as it was trained (``load_trained``).

Which data a run needs follows from its tasks: each task reads the dataset annotation its
``source`` names (its own name by default, tasks/base.py), so ``--task det,seg`` on VOC loads
VOC's "det" boxes and "seg" masks, and ``--task det,drivable,lane`` on BDD100K its three
annotations. ``data.dataset: A+B`` gives each task its own dataset (mixed-dataset training).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..datasets import build_dataset, default_data_root, default_train_split
from ..datasets.mixed import MixedDataset, parse_dataset_spec
from ..datasets.transforms import eval_transforms, train_transforms
from ..errors import CheckpointError, ConfigError, DatasetError
from ..models.factory import build_model_tasks, create_model
from ..models.model import MultiTaskEfficientDet
from ..tasks.base import TASKS, Task, task_type_of
from .checkpoint import load_checkpoint, load_weights
from .config import ExperimentConfig, config_from_dict, deep_merge
from .distributed import unwrap
from .param_groups import build_param_groups

log = logging.getLogger(__name__)


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
    return tuple(cfg.model_config().image_size)  # type: ignore[return-value]


# ---------------------------------------------------------------------------- data

@dataclass(frozen=True)
class TaskData:
    """What a task needs from a dataset: the annotation it reads and that annotation's kind."""

    source: str
    kind: str


def task_data(cfg: ExperimentConfig) -> dict[str, TaskData]:
    """Every task of the run that learns from a dataset annotation (in task order)."""
    out = {}
    for t in cfg.tasks:
        cls = TASKS.get(task_type_of(t, cfg.task_sections.get(t)))
        if cls.annotation is None:
            continue
        source = getattr(cfg.task_config(t), "source", None) or t
        out[t] = TaskData(source, cls.annotation)
    if not out:
        raise ConfigError(f"none of the tasks {list(cfg.tasks)} learns from a dataset annotation: nothing to load")
    return out


def _check_kinds(dataset, needs: Mapping[str, TaskData]) -> None:
    for t, need in needs.items():
        kind = dataset.annotations.get(need.source)
        if kind != need.kind:
            raise ConfigError(
                f"task {t!r} learns from {need.kind} but annotation {need.source!r} of dataset {dataset.name!r} "
                f"holds {kind}; point the task at another annotation with --set {t}.source=NAME"
            )


@dataclass
class Data:
    train: Any
    #: (dataset with eval transforms, tasks scored on it)
    eval_sets: list[tuple[Any, list[str]]]
    #: task name → class names (of the annotation the task reads)
    class_names: dict[str, list[str]]


def _groups(cfg: ExperimentConfig, needs: Mapping[str, TaskData]) -> dict[str, list[str]]:
    """Dataset name → the tasks that read it (``data.dataset`` may name one per task: ``A+B``)."""
    spec = parse_dataset_spec(cfg.data.dataset, list(needs))
    groups: dict[str, list[str]] = {}
    for t, name in spec.items():
        groups.setdefault(name, []).append(t)
    return groups


def _class_names(dataset, needs: Mapping[str, TaskData], tasks: Sequence[str]) -> dict[str, list[str]]:
    return {t: list(dataset.class_names[needs[t].source]) for t in tasks if needs[t].source in dataset.class_names}


def build_eval_sets(cfg: ExperimentConfig, split: str | None = None) -> tuple[list[tuple[Any, list[str]]], dict[str, list[str]]]:
    """Validation datasets (eval transforms), the tasks scored on each, and the tasks' class names."""
    needs = task_data(cfg)
    groups = _groups(cfg, needs)
    root = data_root(cfg)
    tf = eval_transforms(image_size_of(cfg))
    split = split or cfg.data.val_split
    opts = dict(cfg.data.options, on_error=cfg.data.on_error)
    sets, names = [], {}
    for name, ts in groups.items():
        ds = build_dataset(name, root, split, [needs[t].source for t in ts], tf, **opts)
        _check_kinds(ds, {t: needs[t] for t in ts})
        if len(ds) == 0:  # scored, an empty split would give AP 0 / an mIoU of nothing: numbers that are not true
            raise DatasetError(f"the {split!r} split of {name} under {root} has no images, so there is nothing to "
                               "evaluate; check its image list or annotation file, or choose another split "
                               "(--set data.val_split=NAME, or --split for mtedet eval)")
        # a task that reads no annotation is scored on the one dataset there is
        scored = ts + ([t for t in cfg.tasks if t not in needs] if len(groups) == 1 else [])
        sets.append((ds, scored))
        names.update(_class_names(ds, needs, ts))
    return sets, names


def build_data(cfg: ExperimentConfig) -> Data:
    needs = task_data(cfg)
    groups = _groups(cfg, needs)
    root = data_root(cfg)
    size = image_size_of(cfg)
    d = cfg.data
    tf = train_transforms(size, [n.kind for n in needs.values()], hflip=d.hflip, color_jitter=d.color_jitter,
                          **({"scale_range": d.scale_range} if d.scale_range is not None else {}))
    opts = dict(d.options, on_error=d.on_error, seed=cfg.train.seed)

    def build(name: str, tasks: Sequence[str]):
        sources = [needs[t].source for t in tasks]
        split = d.train_split or default_train_split(name, root, sources, d.options)
        ds = build_dataset(name, root, split, sources, tf, **opts)
        _check_kinds(ds, {t: needs[t] for t in tasks})
        return ds

    if len(groups) == 1:
        name, tasks = next(iter(groups.items()))
        train = build(name, tasks)
        class_names = _class_names(train, needs, tasks)
    else:
        parts = {t: build(name, [t]) for name, ts in groups.items() for t in ts}
        train = MixedDataset(parts)
        class_names = {}
        for t, ds in parts.items():
            class_names.update(_class_names(ds, needs, [t]))
    if len(train) == 0:
        raise DatasetError(f"the training split of {d.dataset} under {root} has no images")
    eval_sets, _ = build_eval_sets(cfg)
    return Data(train, eval_sets, class_names)


# ---------------------------------------------------------------------------- model and tasks

def build_model(cfg: ExperimentConfig, class_names: Mapping[str, Sequence[str]], checkpoint: str | None = None,
                initial_weights: bool = True) -> nn.Module:
    """The run's network: the variant with the config's overrides, a head per task (options from
    its section, class count from the dataset), initial weights from ``model.checkpoint`` and the
    backbone's ``pretrained``/``weights``. ``initial_weights=False``: none of these is read (no
    network, no file) — for a model whose every weight is loaded next (resumed, trained)."""
    ckpt = checkpoint if checkpoint is not None else (cfg.model.checkpoint if initial_weights else None)
    strict = checkpoint is not None or cfg.model.checkpoint_strict
    tasks = {t: dict(cfg.task_sections.get(t, {})) for t in cfg.tasks}
    return create_model(cfg.model_config(), tasks=tasks, checkpoint=ckpt, strict=strict, class_names=class_names,
                        initial_weights=initial_weights)


def build_tasks(model: nn.Module, class_names: Mapping[str, Sequence[str]]) -> dict[str, Task]:
    """The task objects of a model built by ``build_model`` (its config holds every task's options)."""
    return build_model_tasks(unwrap(model).config, class_names)


def build_optimizer(cfg: ExperimentConfig, model: nn.Module, weighting, lr: float) -> torch.optim.Optimizer:
    t = cfg.train
    # parts held by train.freeze_steps get groups of their own (engine/finetune.py sets their rate)
    groups = build_param_groups(model, lr, t.weight_decay, t.no_decay_bn_bias, t.lr_mult, own_groups=t.freeze_steps)
    groups += weighting.param_groups(lr)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=t.momentum)
    return torch.optim.AdamW(groups, lr=lr)


# ---------------------------------------------------------------------------- from checkpoints

def load_resume_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """The config a checkpoint was written with, with explicit ``overrides`` merged over it."""
    saved = load_checkpoint(path).get("config")
    if not saved:
        raise ConfigError(f"checkpoint {path} carries no config; it was not written by `mtedet train`")
    return config_from_dict(deep_merge(saved, dict(overrides or {})))


@dataclass
class Trained:
    """A trained model ready for inference, from any model source (``load_for_inference``)."""

    #: the experiment config of the run that trained it; None for a model saved with
    #: ``save_pretrained`` outside a run (inference needs only the model's own config)
    config: ExperimentConfig | None
    model: nn.Module
    tasks: dict[str, Task]
    class_names: dict[str, list[str]]

    @property
    def image_size(self) -> tuple[int, int]:
        """The network input (H, W) the model was built for."""
        return tuple(unwrap(self.model).config.image_size)  # type: ignore[return-value]

    @property
    def amp(self) -> str:
        """Mixed precision of the run (``train.amp``); "auto" (fp32 on CPU) without a run config."""
        return self.config.train.amp if self.config is not None else "auto"


def load_trained(path: str | Path, overrides: Mapping[str, Any] | None = None, device: str | torch.device = "cpu") -> Trained:
    """The model a run trained (EMA weights when it has them), in eval mode on ``device``.

    ``overrides`` (nested dict) change the saved config, e.g. the dataset to evaluate on or
    post-processing options; the network itself must stay what was trained.
    """
    sd, info = load_weights(path)
    saved = info.get("config")
    if not saved:
        raise CheckpointError(f"{path} carries no experiment config; it was not written by `mtedet train`")
    # the initial-weights files of the training are not needed (and may be gone, e.g. on another
    # machine after sharing): the weights come from sd
    no_init = {"model": {"checkpoint": None, "backbone": {"weights": None}}}
    cfg = config_from_dict(deep_merge(deep_merge(saved, dict(overrides or {})), no_init))
    class_names = {k: list(v) for k, v in (info.get("class_names") or {}).items()}
    model = build_model(cfg, class_names, initial_weights=False)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"weights in {path} do not fit the model of its config: {str(e).splitlines()[0][:300]}") from None
    step = info.get("step", (info.get("state") or {}).get("step"))
    model.release_info = {"experiment": saved, **({"step": int(step)} if step is not None else {}),
                          **({"metrics": info["metrics"]} if info.get("metrics") else {})}
    model.to(device).eval()
    return Trained(cfg, model, build_tasks(model, class_names), class_names)


def load_for_inference(source: str | Path, overrides: Mapping[str, Any] | None = None,
                       device: str | torch.device = "cpu") -> Trained:
    """THE resolver of model sources for prediction, evaluation, export and sharing.

    ``source`` is one of: a training checkpoint (``last.pt``/``best.pt``), a ``model.safetensors``
    file, a run folder (its release weights; best.pt, else last.pt, before the run has finished)
    or a ``save_pretrained`` folder, a Hugging Face Hub repository id
    (``owner/name``, fetched into the Hub cache; multitask_edet/hub.py ``locate``), or
    ``effdet:NAME``, a COCO detector effdet published (``effdet:tf_efficientdet_d0``; fetched
    into torch.hub's cache, compat/effdet_weights.py). ``overrides`` change the saved config as
    in ``load_trained`` (without a run config: task options only).
    """
    from .. import hub
    from ..compat.effdet_weights import PREFIX

    if isinstance(source, str) and source.startswith(PREFIX):
        return _published_detector(source, overrides, device)
    path = hub.locate(source)
    if path.is_dir() and not (path / hub.WEIGHTS_FILE).is_file():
        # a run folder whose run has not finished: its best, else its last checkpoint
        path = next((path / n for n in ("best.pt", "last.pt") if (path / n).is_file()), path)
    if path.is_file() and path.suffix != ".safetensors":
        return load_trained(path, overrides, device)
    info = hub.read_info(path)
    if info.get("experiment"):
        return load_trained(hub.weights_file(path), overrides, device)
    info = _task_overrides(info, overrides, source)
    sd, _ = load_weights(hub.weights_file(path))
    model = MultiTaskEfficientDet.build_pretrained(info, sd, str(source)).to(device)
    return Trained(None, model, build_tasks(model, model.class_names), dict(model.class_names))


def _published_detector(source: str, overrides: Mapping[str, Any] | None, device: str | torch.device) -> Trained:
    """``effdet:NAME``: a published COCO detector, no training config (its ``det`` options may change)."""
    from ..models.factory import coco_detector

    options = dict(overrides or {})
    det = dict(options.pop("det", None) or {})
    other = sorted(k for k, v in options.items() if v)
    if other:
        raise ConfigError(f"{source} is a published COCO detector without a training config: only its det options "
                          f"can be changed, not {', '.join(other)}")
    model, _ = coco_detector(source, device, **det)
    return Trained(None, model, build_tasks(model, model.class_names), dict(model.class_names))


def _task_overrides(info: dict[str, Any], overrides: Mapping[str, Any] | None, source: str | Path) -> dict[str, Any]:
    """Apply task-section overrides to a pretrained model config that has no experiment config."""
    tasks = dict(info["model_config"].get("tasks") or {})
    for key, value in (overrides or {}).items():
        if key in tasks:
            tasks[key] = deep_merge(tasks[key], dict(value or {}))
        elif value:
            raise ConfigError(f"{source} holds a model without its training config: only its tasks' options "
                              f"({', '.join(tasks)}) can be changed, not {key!r}")
    return {**info, "model_config": {**info["model_config"], "tasks": tasks}}


__all__ = [
    "Data", "TaskData", "Trained", "amp_dtype_for", "build_data", "build_eval_sets", "build_model", "build_optimizer",
    "build_tasks", "data_root", "image_size_of", "load_for_inference", "load_resume_config", "load_trained",
    "seed_everything", "task_data",
]  # fmt: skip
