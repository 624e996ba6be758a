"""The experiment config: model + tasks + data + training recipe + output.

One typed dataclass tree, built from a recipe YAML (``multitask_edet/configs/*.yaml``, or
any file), then the CLI's flags, then ``--set a.b=c`` overrides — every layer validated
strictly (an unknown key is an error naming the valid ones). The resolved config is saved
as ``config.yaml`` in the run folder and inside every checkpoint, so evaluation, prediction
and export rebuild the same model from a checkpoint alone.

Every task has a top-level section named after it (``det:``, ``seg:``, ``drivable:``,
``centres:``): ``type`` (the registered task type; default: the name itself) and the fields
of that type's Config (tasks/base.py). The sections are validated, together with the model's
settings, when the config is built — a misspelled key fails before any data is read.

Recipe defaults are the paper's (§5.1): SGD momentum 0.9, weight decay 4e-5
(none on BN and biases), linear warm-up for one epoch then cosine, lr 0.16 at a global batch
of 128 (scaled linearly with the actual global batch), EMA decay 0.9998, gradient clipping.

A recipe may start with ``base: OTHER_RECIPE`` (a name or a path, or a list of them): the
base is loaded first and the recipe's own keys are merged over it, so the D0–D7x recipes
differ only in what differs.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from ..config_utils import from_dict, load_yaml, parse_overrides, to_dict
from ..errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class ModelSpec:
    #: a named variant (``mtedet info``/``list_models()``): efficientdet-d0 … d7x, efficientdet-d4-seg
    name: str = "efficientdet-d0"
    #: initial weights: our checkpoint/safetensors or an effdet state dict (converted on load)
    checkpoint: str | None = None
    #: false = fine-tune: load every weight of ``checkpoint`` whose name and shape fit (e.g. COCO
    #: weights into a 20-class VOC model or under a new seg head), keep the fresh init of the rest
    checkpoint_strict: bool = True
    #: (H, W) network input; None = the variant's native size. Multiple of 2**max_level.
    image_size: tuple[int, int] | None = None
    #: overrides of the variant's BackboneConfig / NeckConfig fields (validated against them)
    backbone: dict[str, Any] = field(default_factory=dict)
    neck: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False


@dataclass
class DataConfig:
    #: coco | voc2012 | voc2007 | voc0712 | shapes | a registered name; "A+B" = one dataset per
    #: task in --task order (mixed-dataset training, e.g. coco+voc2012 for det,seg)
    dataset: str = "coco"
    #: data root; None = $MTEDET_DATA, then ./data
    root: str | None = None
    #: None = the dataset's default: "train" (voc2012 masks: train_aug when SBD is present)
    train_split: str | None = None
    val_split: str = "val"
    #: DataLoader worker processes per training process
    workers: int = 4
    #: a sample that fails to load: stop with its file and the reason, or skip it (listed at the end)
    on_error: Literal["raise", "skip"] = "raise"
    #: scale jitter of the fit-to-input scale; None = [0.1, 2.0] with det, [0.5, 2.0] seg-only
    scale_range: tuple[float, float] | None = None
    hflip: float = 0.5
    color_jitter: float = 0.0
    #: mixed datasets: relative number of batches per task (missing tasks weigh 1)
    mix_ratio: dict[str, float] = field(default_factory=dict)
    #: extra keyword options of the dataset adapter (e.g. difficult: drop, sbd_root: PATH)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    epochs: int = 300
    #: stop after this many optimizer iterations (None = epochs × iterations per epoch)
    max_steps: int | None = None
    #: images per process per step; the global batch is batch_size × number of processes
    batch_size: int = 8
    optimizer: Literal["sgd", "adamw"] = "sgd"
    #: learning rate at ``base_batch`` images per step; scaled linearly with the global batch
    base_lr: float = 0.16
    base_batch: int = 128
    #: fixed learning rate (disables the batch scaling)
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 4e-5
    #: no weight decay on normalisation weights and biases
    no_decay_bn_bias: bool = True
    warmup_epochs: float = 1.0
    #: warm-up starts at lr × warmup_factor (linear to lr)
    warmup_factor: float = 0.001
    #: cosine ends at lr × min_lr_factor
    min_lr_factor: float = 0.0
    #: max global L2 norm of the gradients (None or 0 = no clipping)
    clip_grad_norm: float | None = 10.0
    ema: bool = True
    ema_decay: float = 0.9998
    #: EMA decay ramps up from 0 (timm ModelEmaV3 warm-up) so short runs get a useful EMA
    ema_warmup: bool = True
    #: auto = bf16 on GPUs that support it (else fp16), fp32 on CPU; fp32 = no autocast
    amp: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = 42
    #: auto = the GPU of this process (cuda:LOCAL_RANK) when there is one, else cpu
    device: str = "auto"
    #: SyncBatchNorm under DDP (GPU only: it has no CPU kernel)
    sync_bn: bool = True
    #: DDP option; not needed for the built-in tasks (their losses touch every output)
    find_unused_parameters: bool = False
    #: non-finite losses in a row after which the run stops (with a checkpoint)
    max_nonfinite: int = 20
    #: also write last.pt every N steps (0 = at evaluations, epoch ends and exit only)
    checkpoint_every_steps: int = 0
    #: multi-task: a registered loss weighting rule (fixed | uncertainty | dwa, engine/weighting.py);
    #: per-task weights; options of the rule
    loss_weighting: str = "fixed"
    loss_weights: dict[str, float] = field(default_factory=dict)
    loss_weighting_options: dict[str, Any] = field(default_factory=dict)
    #: parts to freeze (backbone, neck, a task name, or a module path)
    freeze: list[str] = field(default_factory=list)
    #: per-part learning-rate multipliers, e.g. {backbone: 0.1}
    lr_mult: dict[str, float] = field(default_factory=dict)
    #: parts held still (learning rate 0, BN statistics frozen) for their first N steps, e.g.
    #: {backbone: 500}: fresh BiFPN and heads settle before the pretrained backbone moves
    freeze_steps: dict[str, int] = field(default_factory=dict)
    #: parts whose BatchNorm layers stay frozen (eval statistics, fixed affine) for the whole run,
    #: e.g. [backbone] with pretrained weights and small per-GPU batches
    frozen_bn: list[str] = field(default_factory=list)
    #: momentum of every BatchNorm's running statistics (PyTorch convention); None = as built: 0.01 in
    #: the BiFPN and heads (TF's 0.99, for long schedules), timm's 0.1 in the backbone. Short
    #: fine-tunings want 0.1, or eval-mode statistics lag behind the weights
    bn_momentum: float | None = None


@dataclass
class EvalConfig:
    #: evaluate every N epochs (0 = only at the end)
    every_epochs: int = 1
    #: also evaluate every N steps (0 = off)
    every_steps: int = 0
    #: images per process; None = the training batch size
    batch_size: int | None = None
    #: evaluate (and pick best.pt by) the EMA weights when EMA is on
    use_ema: bool = True
    #: evaluate only the first N images of the split (None = all; for quick checks)
    max_images: int | None = None


@dataclass
class LogConfig:
    #: metrics.jsonl / TensorBoard / log line every N steps
    every_steps: int = 20
    tensorboard: bool = True
    #: auto = a tqdm bar on a terminal, plain log lines otherwise
    progress: Literal["auto", "bar", "plain", "none"] = "auto"


_SECTIONS = ("tasks", "plugins", "model", "data", "train", "eval", "log", "output")


@dataclass
class ExperimentConfig:
    #: tasks trained together on the shared trunk: det, seg, or any task of a registered type
    tasks: tuple[str, ...] = ("det",)
    #: modules or .py files imported before the config is validated: where a user's task types,
    #: datasets or loss weightings register themselves (a recipe's relative paths are relative to it)
    plugins: list[str] = field(default_factory=list)
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    #: run folder; None = runs/<tasks>-<dataset>-<model>
    output: str | None = None
    #: each task's section as given (``type`` + fields of the type's Config); to_dict/YAML
    #: write them at the top level under the task's name
    task_sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        self.task_sections = {**{t: {} for t in self.tasks}, **self.task_sections}
        validate(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExperimentConfig":
        """A config from its dict form (YAML): top-level keys other than the sections are task sections."""
        data = _migrate(dict(data))
        plugins = data.get("plugins") or []
        if not isinstance(plugins, (list, tuple)) or not all(isinstance(p, str) for p in plugins):
            raise ConfigError(f"plugins must be a list of module names or .py files, got {plugins!r}")
        load_plugins(plugins)
        known = {k: v for k, v in data.items() if k in _SECTIONS}
        if isinstance(known.get("tasks"), str):
            known["tasks"] = [t.strip() for t in known["tasks"].split(",") if t.strip()]
        tasks = [str(t) for t in (known.get("tasks") or cls.tasks)] if isinstance(known.get("tasks", []), (list, tuple)) else []
        sections = {}
        for k, v in data.items():
            if k in _SECTIONS:
                continue
            if k == "task_sections":
                raise ConfigError("task sections are written at the top level under the task's name (e.g. det: {...})")
            # a section is a task's when the key names a task of the config or a task type, or when
            # it gives a registered `type` (a recipe's drivable: {type: seg} while training --task lane)
            typed = isinstance(v, Mapping) and isinstance(v.get("type"), str) and _is_task_type(v["type"])
            if k not in tasks and not _is_task_type(k) and not typed:
                raise ConfigError(
                    f"unknown config key {k!r}; valid keys: {', '.join(_SECTIONS)} and a section per task "
                    f"(tasks of this config: {', '.join(tasks) or 'none'})"
                )
            if v is not None and not isinstance(v, Mapping):
                raise ConfigError(f"config section {k!r} must be a mapping of the task's options, got {v!r}")
            if k not in tasks:
                # e.g. a base recipe's section of a task this recipe does not train
                log.info("config section %r is for a task this run does not train (tasks: %s); ignored", k, ", ".join(tasks))
                continue
            sections[k] = dict(v or {})
        return from_dict(cls, {**known, "task_sections": sections})

    def to_dict(self) -> dict[str, Any]:
        d = to_dict(self)
        d.pop("task_sections")
        d.update({t: to_dict(self.task_sections[t]) for t in self.tasks})
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def run_dir(self) -> Path:
        if self.output:
            return Path(self.output)
        tasks = "+".join(self.tasks)
        return Path("runs") / f"{tasks}-{self.data.dataset}-{self.model.name}"

    def task_config(self, name: str, class_names: Sequence[str] | None = None) -> Any:
        """The typed config of task ``name`` (defaults ← the model variant's ← class count ← its section)."""
        from ..tasks.base import resolve_task_config

        return resolve_task_config(name, self.task_sections.get(name), self.model_config().task_defaults, class_names)[1]

    def model_config(self):
        """The model variant with this experiment's backbone/neck/image-size overrides (no task options)."""
        from ..models.factory import resolve_config

        overrides: dict[str, Any] = {k: dict(getattr(self.model, k)) for k in ("backbone", "neck") if getattr(self.model, k)}
        if self.model.image_size is not None:
            overrides["image_size"] = tuple(self.model.image_size)
        return resolve_config(self.model.name, where="model", tasks={t: {} for t in self.tasks}, **overrides)


_LOADED_PLUGINS: dict[str, Any] = {}


def load_plugins(plugins: Sequence[str]) -> None:
    """Import each plugin once per process: a module name (``my_pkg.tasks``) or a ``.py`` file."""
    import importlib
    import importlib.util
    import sys

    for p in plugins:
        key = str(Path(p).resolve()) if p.endswith(".py") else p
        if key in _LOADED_PLUGINS:
            continue
        try:
            if p.endswith(".py"):
                path = Path(key)
                if not path.is_file():
                    raise ConfigError(f"plugin file {p} does not exist")
                name = f"mtedet_plugin_{path.stem}_{abs(hash(key)) % 10**8}"
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            else:
                module = importlib.import_module(p)
        except ModuleNotFoundError as e:
            raise ConfigError(f"plugin {p!r} cannot be imported ({e}); give an importable module or a .py file") from None
        _LOADED_PLUGINS[key] = module


def _is_task_type(name: str) -> bool:
    from ..tasks import TASKS

    return name in TASKS


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Configs saved by version 0.1 kept head shapes under ``model.det``/``model.seg``: move them
    into the task sections, so its checkpoints keep loading."""
    model = data.get("model")
    if not isinstance(model, Mapping) or not ({"det", "seg"} & set(model)):
        return data
    data, model = dict(data), dict(model)
    for t in ("det", "seg"):
        head = model.pop(t, None)
        if head:
            data[t] = {**dict(head), **dict(data.get(t) or {})}
    data["model"] = model
    return data


def validate(cfg: ExperimentConfig) -> None:
    """Checks across fields (types are checked by from_dict), the model settings and every task section."""
    import math

    if not cfg.tasks:
        raise ConfigError("tasks is empty; give at least one, e.g. --task det")
    if len(set(cfg.tasks)) != len(cfg.tasks):
        raise ConfigError(f"tasks {list(cfg.tasks)} repeats a task")
    t = cfg.train
    for name in ("epochs", "batch_size", "base_batch", "max_nonfinite"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if t.max_steps is not None and t.max_steps < 1:
        raise ConfigError(f"train.max_steps must be >= 1 or null, got {t.max_steps}")
    # NaN passes every "< 0" test, so finiteness is checked first and explicitly
    for name in ("base_lr", "lr", "weight_decay", "warmup_epochs", "warmup_factor", "min_lr_factor", "ema_decay",
                 "momentum", "clip_grad_norm"):
        value = getattr(t, name)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"train.{name} must be a finite number, got {value}")
        if value is not None and value < 0:
            raise ConfigError(f"train.{name} must be >= 0, got {value}")
    for name in ("loss_weights", "lr_mult"):
        for key, value in getattr(t, name).items():
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"train.{name}.{key} must be a finite number >= 0, got {value}")
    for where, value in (("train.checkpoint_every_steps", t.checkpoint_every_steps),
                         ("eval.every_epochs", cfg.eval.every_epochs), ("eval.every_steps", cfg.eval.every_steps)):
        if value < 0:
            raise ConfigError(f"{where} must be >= 0 (0 = off), got {value}")
    if cfg.eval.max_images is not None and cfg.eval.max_images < 1:
        raise ConfigError(f"eval.max_images must be >= 1 or null, got {cfg.eval.max_images}")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if t.bn_momentum is not None and not 0 < t.bn_momentum <= 1:
        raise ConfigError(f"train.bn_momentum must be in (0, 1] or null, got {t.bn_momentum}")
    bad = {k: v for k, v in t.freeze_steps.items() if not isinstance(v, int) or v < 0}
    if bad:
        raise ConfigError(f"train.freeze_steps values must be step counts >= 0, got {bad}")
    if cfg.data.workers < 0:
        raise ConfigError(f"data.workers must be >= 0, got {cfg.data.workers}")
    if cfg.model.image_size is not None and min(cfg.model.image_size) <= 0:
        raise ConfigError(f"model.image_size must be positive, got {cfg.model.image_size}")
    if cfg.eval.batch_size is not None and cfg.eval.batch_size < 1:
        raise ConfigError(f"eval.batch_size must be >= 1, got {cfg.eval.batch_size}")
    if cfg.log.every_steps < 1:
        raise ConfigError(f"log.every_steps must be >= 1, got {cfg.log.every_steps}")
    from .weighting import WEIGHTINGS

    if t.loss_weighting not in WEIGHTINGS:
        raise ConfigError(f"train.loss_weighting {t.loss_weighting!r}: valid rules: {', '.join(WEIGHTINGS.names())}")
    unknown = sorted(set(cfg.task_sections) - set(cfg.tasks))
    if unknown:
        raise ConfigError(f"task section(s) {unknown} name no task of this config (tasks: {list(cfg.tasks)})")
    # the model's settings and every task's section, as the run will build them
    for task in cfg.tasks:
        cfg.task_config(task)


# ---------------------------------------------------------------------------- recipes

def list_recipes() -> list[str]:
    """The shipped recipes (files starting with "_" hold other settings, not recipes)."""
    return sorted(p.name[: -len(".yaml")] for p in _recipe_dir().iterdir()
                  if p.name.endswith(".yaml") and not p.name.startswith("_"))


def _recipe_dir():
    # package data of multitask_edet (pyproject: package-data configs/*.yaml), not a subpackage
    return resources.files("multitask_edet").joinpath("configs")


def recipe_path(name_or_path: str | Path) -> Path:
    """A YAML file path, or the name of a shipped recipe (with or without ``.yaml``)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    if p.is_file():
        return p
    stem = p.name[: -len(".yaml")] if p.name.endswith(".yaml") else p.name
    if p.parent == Path(".") and stem in list_recipes():
        return Path(str(_recipe_dir().joinpath(f"{stem}.yaml")))
    raise ConfigError(
        f"config {str(name_or_path)!r} is neither a file nor a shipped recipe; recipes: {', '.join(list_recipes())}"
    )


def load_recipe(name_or_path: str | Path, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The recipe's raw dict with its ``base`` chain merged in (not yet validated)."""
    path = recipe_path(name_or_path)
    key = str(path.resolve())
    if key in _seen:
        raise ConfigError(f"config {path} includes itself through 'base'")
    data = load_yaml(path)
    if isinstance(data.get("plugins"), list):
        data["plugins"] = [str(path.parent / p) if isinstance(p, str) and p.endswith(".py") and not Path(p).is_absolute()
                           else p for p in data["plugins"]]
    bases = data.pop("base", None)
    if bases is None:
        return data
    merged: dict[str, Any] = {}
    for b in [bases] if isinstance(bases, str) else list(bases):
        # a relative base path is relative to the including file
        cand = path.parent / b if not Path(b).is_absolute() and (path.parent / b).is_file() else b
        merged = deep_merge(merged, load_recipe(cand, _seen + (key,)))
    return deep_merge(merged, data)


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dicts merged key by key; other values replaced."""
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def default_recipe(tasks: Sequence[str], dataset: str | None) -> str:
    """The recipe used when no --config is given: the rules of ``configs/_default-recipes.yaml``."""
    path = Path(str(_recipe_dir().joinpath("_default-recipes.yaml")))
    rules = yaml.safe_load(path.read_text()) or []
    ds = dataset or ""
    for rule in rules:
        want = rule.get("dataset")
        names = [want] if isinstance(want, str) else list(want or [])
        if not set(rule.get("tasks") or ()) <= set(tasks):
            continue
        if want is None or (want == "mixed" and "+" in ds) or ds in names:
            return rule["recipe"]
    raise ConfigError(f"no default recipe fits tasks {list(tasks)} and dataset {ds!r}; pass --config RECIPE")


#: the named settings of the CLI's flags and of ``Experiment``'s keywords → the config path each sets
OVERRIDE_PATHS = {
    "tasks": "tasks", "dataset": "data.dataset", "data_root": "data.root", "workers": "data.workers",
    "on_error": "data.on_error", "mix_ratio": "data.mix_ratio", "model": "model.name", "image_size": "model.image_size",
    "epochs": "train.epochs", "max_steps": "train.max_steps", "batch_size": "train.batch_size", "device": "train.device",
    "amp": "train.amp", "seed": "train.seed", "lr": "train.lr", "base_lr": "train.base_lr", "optimizer": "train.optimizer",
    "ema": "train.ema", "weighting": "train.loss_weighting", "loss_weights": "train.loss_weights",
    "freeze": "train.freeze", "lr_mult": "train.lr_mult", "output": "output",
}  # fmt: skip


def experiment_overrides(**values: Any) -> dict[str, Any]:
    """Named settings (``OVERRIDE_PATHS``; None = not given) → the nested config updates they stand for.

    What ``mtedet train``'s flags and ``Experiment(...)``'s keywords share, so both map them alike:
    ``tasks`` may be "det,seg"; ``image_size`` an int or (H, W); ``dataset`` a mapping
    {task: dataset} for mixed-dataset training.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in OVERRIDE_PATHS:
            raise ConfigError(f"unknown setting {key!r}; named settings: {', '.join(OVERRIDE_PATHS)}")
        if value is None:
            continue
        if key == "tasks" and isinstance(value, str):
            value = [t.strip() for t in value.split(",") if t.strip()]
        elif key == "image_size":
            value = [int(value), int(value)] if isinstance(value, (int, float)) else [int(v) for v in value]
        elif key == "dataset" and isinstance(value, Mapping):
            value = "+".join(f"{t}={name}" for t, name in value.items())
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, (tuple, list)) or isinstance(value, Mapping):
            value = copy.deepcopy(dict(value) if isinstance(value, Mapping) else list(value))
        node = out
        *parents, leaf = OVERRIDE_PATHS[key].split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def build_config(
    config: str | Path | None = None,
    *,
    tasks: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    set_items: Sequence[str] = (),
) -> ExperimentConfig:
    """Recipe (``config`` or the default for ``tasks``) ← ``overrides`` ← ``--set`` items.

    ``overrides`` is a nested dict (what CLI flags such as --epochs map to); ``set_items``
    are ``a.b=c`` strings. Everything is merged first and validated once.
    """
    flat = parse_overrides(set_items)
    layered = deep_merge(dict(overrides or {}), flat)
    if config is None:
        want = tasks or layered.get("tasks") or ()
        want = tuple(want.split(",")) if isinstance(want, str) else tuple(want)
        ds = (layered.get("data") or {}).get("dataset")
        config = default_recipe(want, ds)
    raw = load_recipe(config)
    if tasks is not None:
        raw["tasks"] = list(tasks)
    raw = deep_merge(raw, layered)
    _check_explicit_sections(layered, raw.get("tasks") or ExperimentConfig.tasks)
    return ExperimentConfig.from_dict(raw)


def _check_explicit_sections(layered: Mapping[str, Any], tasks: str | Sequence[str]) -> None:
    """A section given explicitly (``--set x.y=...``, an API keyword) for a task the run does not
    train would do nothing: that is an error, unlike a base recipe's unused section."""
    want = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t) for t in tasks]
    for k in layered:
        if k not in _SECTIONS and k not in want:
            raise ConfigError(
                f"setting {k!r} names no section of the config and no task of this run (tasks: {', '.join(want)}); "
                f"valid sections: {', '.join(_SECTIONS)} and one per task"
            )


def config_from_dict(data: Mapping[str, Any]) -> ExperimentConfig:
    """Rebuild a saved config (config.yaml, a checkpoint's ``config`` entry)."""
    return ExperimentConfig.from_dict(data)


def replace(cfg: ExperimentConfig, **sections: Any) -> ExperimentConfig:
    """A copy with nested updates, validated: ``replace(cfg, train={"epochs": 1})``."""
    return ExperimentConfig.from_dict(deep_merge(cfg.to_dict(), sections))


__all__ = [
    "DataConfig", "EvalConfig", "ExperimentConfig", "LogConfig", "ModelSpec", "TrainConfig", "build_config",
    "config_from_dict", "default_recipe", "experiment_overrides", "list_recipes", "load_recipe", "recipe_path",
    "replace",
]  # fmt: skip
