"""The task contract: everything the library needs from a task, built-in or a user's.

A *task type* is registered under a name (``register_task("det", DetectionTask)``). It owns
everything specific to it, the way a timm entrypoint owns its model:

- ``Config``: a dataclass of its options — head shape, loss, post-processing, evaluation. An
  experiment's section named after the task (``det:``, ``drivable:``, ``--set
  centres.sigma=2``) is validated against it when the config is loaded.
- ``annotation``: the kind of dataset annotation it learns from, ``"boxes"`` or ``"mask"``
  (datasets/base.py), read from the sample key ``source`` (the task's name unless its config
  says otherwise).
- ``build_head(in_channels, padding)``: its head, which the model factory calls.
- ``loss``, ``predict`` (the one inference entry that evaluation, ``mtedet predict`` and the
  Python API share, so test-time augmentation works everywhere), ``evaluator``, ``record``
  and ``draw`` (what ``mtedet predict`` writes), ``export_outputs`` (what a raw ONNX export
  names), ``export_postprocess`` (the task's inference inside an end-to-end exported graph:
  what ``predict`` computes, as traceable tensor operations with fixed-rank outputs) and
  ``export_check`` (how that graph's outputs are compared with PyTorch's).

A model may hold several instances of one type under different names — two segmentation heads
``drivable`` and ``lane`` with their own class sets — each with its own config section, head,
loss weight, evaluator and report. The built-in tasks go through exactly this path.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import nn

from ..config_utils import from_dict, merge, to_dict
from ..errors import ConfigError
from ..registry import Registry

TASKS: Registry[type["Task"]] = Registry("task type")

#: the kinds of annotation a dataset can supply (datasets/base.py)
ANNOTATION_KINDS = ("boxes", "mask")


def register_task(name: str, cls: type["Task"] | None = None, *, override: bool = False):
    """Register a task type (usable as a class decorator). Its ``type_name`` becomes ``name``."""

    def add(c: type["Task"]) -> type["Task"]:
        if not (isinstance(c, type) and issubclass(c, Task)):
            raise TypeError(f"register_task({name!r}) expects a Task subclass, got {c!r}")
        if c.annotation is not None and c.annotation not in ANNOTATION_KINDS:
            raise TypeError(f"task {name!r}: annotation must be one of {ANNOTATION_KINDS} or None, got {c.annotation!r}")
        TASKS.register(name, c, override=override)
        if "type_name" not in c.__dict__:
            c.type_name = name
        return c

    return add if cls is None else add(cls)


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The config of a task type that declares none."""


class Evaluator(ABC):
    """Accumulates predictions over a dataset; ``compute`` returns a flat dict of metrics.

    ``main_metric`` names the key of ``compute()`` used to pick the best checkpoint
    (higher is better). ``sync`` merges state across distributed processes.
    """

    main_metric: str = ""

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def update(self, predictions: list[Any], batch: dict[str, Any]) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...

    def sync(self) -> None:
        """Gather state from all processes (torch.distributed) before ``compute``."""

    def report(self) -> str:
        """A human-readable table of the last ``compute``."""
        return ""


class Forward:
    """The model's outputs for one batch, computed once and shared by every task's ``predict``.

    ``forward()`` gives the outputs of the images as they are; ``forward(flip=True)`` those of
    their horizontal mirror (computed on first request only, then cached), so tasks that use
    flip test-time augmentation share one extra pass.
    """

    def __init__(self, run: Callable[[torch.Tensor], dict[str, Any]], images: torch.Tensor):
        self._run = run
        self.images = images
        self._cache: dict[bool, dict[str, Any]] = {}

    def __call__(self, flip: bool = False) -> dict[str, Any]:
        if flip not in self._cache:
            self._cache[flip] = self._run(self.images.flip(-1) if flip else self.images)
        return self._cache[flip]


@dataclasses.dataclass(frozen=True)
class ExportGeometry:
    """Where the images of an end-to-end exported graph come from (engine/export.py).

    The caller letterboxes every image into the input the way evaluation does
    (datasets/transforms.py ``eval_transforms``): scaled by ``min(H / h0, W / w0)`` to fit,
    placed at the top-left corner, padded bottom/right. ``input = scale · original`` in
    continuous pixel coordinates, so ``original = input / scale``.
    """

    #: (H, W) of the network input (ints, or 0-dim tensors when traced with a dynamic size)
    image_size: tuple[Any, Any]
    #: (B, 2) float32: (h0, w0) of every image before the letterbox
    orig_sizes: torch.Tensor
    #: (B,) float32: the letterbox scale of every image, ``min(H / h0, W / w0)``
    scales: torch.Tensor


class Task(ABC):
    """Base of every task type; see the module docstring for the contract."""

    #: the dataclass of this type's options (the experiment's section of the task)
    Config: ClassVar[type] = NoOptions
    #: kind of dataset annotation learnt from ("boxes", "mask"), or None if it needs none
    annotation: ClassVar[str | None] = None
    #: the registered name of the type (set by ``register_task``)
    type_name: ClassVar[str] = ""

    def __init__(self, config: Any = None, *, name: str | None = None, class_names: Sequence[str] | None = None):
        if config is None:
            config = self.Config()
        elif isinstance(config, Mapping):
            config = from_dict(self.Config, dict(config), name or self.type_name)
        self.config = config
        #: key of this task in the model outputs, the loss dict, the reports and the config
        self.name = name or self.type_name
        self.class_names = list(class_names) if class_names is not None else None

    @classmethod
    def from_config(cls, name: str, config: Any, class_names: Sequence[str] | None = None) -> "Task":
        """The task ``name`` with its validated ``config``; ``class_names`` from the dataset."""
        return cls(config, name=name, class_names=class_names)

    @property
    def source(self) -> str:
        """The dataset annotation (sample key) this task reads: its config's ``source``, else its name."""
        return getattr(self.config, "source", None) or self.name

    # ------------------------------------------------------------------ model
    @abstractmethod
    def build_head(self, in_channels: int, padding: str = "pytorch") -> nn.Module:
        """The head: an ``nn.Module`` with ``levels`` (the pyramid levels it reads) whose forward
        takes those levels' feature maps in order. ``padding`` is the trunk's ("pytorch" or TF "same")."""

    # ------------------------------------------------------------------ training
    def has_targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """Bool (B,): samples that carry this task's annotation."""
        vals = batch.get(self.source)
        n = batch["images"].shape[0]
        if vals is None:
            return torch.zeros(n, dtype=torch.bool)
        return torch.tensor([v is not None for v in vals], dtype=torch.bool)

    @abstractmethod
    def loss(self, outputs: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named losses for this task's raw head ``outputs``.

        Samples without this task's annotation contribute nothing; when none in the batch
        has it, return losses that are exactly zero and still connected to ``outputs``
        (so DDP sees every parameter used) — the head's parameters then do not change.
        """

    # ------------------------------------------------------------------ inference
    @abstractmethod
    def postprocess(self, outputs: Any, batch: dict[str, Any]) -> list[Any]:
        """Per-image predictions in the original image's coordinates/size from raw ``outputs``."""

    def predict(self, forward: Forward, batch: dict[str, Any]) -> list[Any]:
        """Per-image predictions of a batch: what evaluation, ``mtedet predict`` and the API use.

        ``forward()`` returns the model's outputs of the batch (``forward(flip=True)`` those of
        the mirrored images); override to add test-time augmentation.
        """
        return self.postprocess(forward()[self.name], batch)

    @abstractmethod
    def evaluator(self, dataset: Any = None, output_dir: str | None = None) -> Evaluator: ...

    # ------------------------------------------------------------------ outputs for people and runtimes
    def record(self, prediction: Any, *, score_threshold: float = 0.0, save: Callable[[str, Any], str] | None = None) -> Any:
        """The JSON-able record of one image's prediction (``mtedet predict``'s ``<image>.json``).

        ``save(suffix, array)`` writes an array as a PNG next to the record and returns its file
        name (for masks). The default handles tensors, arrays and plain containers.
        """
        return jsonable(prediction)

    def draw(self, canvas: Any, prediction: Any, *, score_threshold: float = 0.0) -> None:
        """Draw one image's prediction on ``canvas`` (a PIL image at the original size) in place."""

    def export_outputs(self, outputs: Any) -> dict[str, torch.Tensor]:
        """This task's raw outputs as named tensors for ONNX export (names are prefixed with the task)."""
        if isinstance(outputs, torch.Tensor):
            return {"output": outputs}
        raise ConfigError(
            f"task {self.name!r} ({type(self).__name__}) returns {type(outputs).__name__} outputs; "
            "override Task.export_outputs to name its tensors for export"
        )

    def export_postprocess(self, forward: Forward, geometry: ExportGeometry) -> dict[str, torch.Tensor]:
        """This task's predictions inside an end-to-end exported graph, as named tensors.

        The counterpart of ``predict`` for a graph (ONNX, ``torch.export``): the same result,
        batched, from traceable tensor operations only — no Python loop over images, no
        data-dependent output shapes (pad to a fixed count and return how many are valid).
        ``forward()[self.name]`` are this task's raw outputs (``forward(flip=True)`` those of the
        mirrored images); ``geometry`` maps input pixels back to the original images. The names
        become graph outputs (prefixed with ``<task>_`` when the model has several tasks).
        """
        raise ConfigError(
            f"task {self.name!r} ({type(self).__name__}) has no end-to-end export: implement "
            "Task.export_postprocess(forward, geometry) to return its predictions as named tensors, "
            "or export the raw outputs (mtedet export without --end-to-end)"
        )

    def export_check(self, got: Mapping[str, Any], ref: Mapping[str, Any], tolerance: float = 1e-4) -> dict[str, float]:
        """Compare this task's outputs of an exported graph (``got``, numpy arrays by the names of
        ``export_postprocess``) with PyTorch's (``ref``) on the same input; return a figure per
        output for the export's description, raise ``ConfigError`` where they differ by more than
        float rounding explains. Default: element-wise (see ``array_difference``)."""
        figures = {}
        for key, r in ref.items():
            figures[key], limit = array_difference(got[key], r, tolerance)
            if figures[key] > limit:
                raise ConfigError(f"task {self.name!r}: exported output {key!r} differs from PyTorch by "
                                  f"{figures[key]:.3g} (limit {limit:.3g}); please report this")
        return figures

    def export_arrays(self, image_size: tuple[int, int]) -> dict[str, Any]:
        """Arrays a runtime needs besides the graph (e.g. detection anchors), by name; none by default."""
        return {}

    def describe_export(self) -> dict[str, Any]:
        """What the exported outputs mean (written to the export's JSON description)."""
        return {"type": self.type_name, "class_names": self.class_names, "config": to_dict(self.config)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, source={self.source!r})"


# ---------------------------------------------------------------------------- resolution

def task_type_of(name: str, options: Mapping[str, Any] | None) -> str:
    """The registered type of the task ``name``: its options' ``type``, else the name itself."""
    typ = (options or {}).get("type") or name
    if not isinstance(typ, str) or typ not in TASKS:
        hint = "" if typ != name else f"; give its type, e.g. --set {name}.type=seg (or {name}: {{type: seg}} in YAML)"
        raise ConfigError(f"task {name!r}: unknown task type {typ!r}; registered types: {', '.join(TASKS.names())}{hint}")
    return typ


def resolve_task_config(
    name: str,
    options: Mapping[str, Any] | None = None,
    type_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[type[Task], Any]:
    """(task class, validated config) of the task ``name``.

    Precedence, lowest first: the type's ``Config`` defaults, a model variant's defaults for the
    type (``type_defaults[type]``: e.g. D3's detection head has 4 repeats), the class count of
    the dataset (``num_classes = len(class_names)``, when the config has that field), and the
    task's own ``options`` (the experiment section). Unknown keys are errors naming the valid ones.
    """
    options = dict(options or {})
    typ = task_type_of(name, options)
    options.pop("type", None)
    cls = TASKS.get(typ)
    cfg = cls.Config()
    defaults = dict((type_defaults or {}).get(typ) or {})
    fields = {f.name for f in dataclasses.fields(cfg)}
    if class_names is not None and "num_classes" in fields:
        defaults["num_classes"] = len(class_names)
    if defaults:
        cfg = merge(cfg, defaults, name)
    if options:
        cfg = merge(cfg, options, name)
    return cls, cfg


def build_task(
    name: str,
    options: Mapping[str, Any] | None = None,
    type_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    class_names: Sequence[str] | None = None,
) -> Task:
    """A task object from its name and experiment section (see ``resolve_task_config``)."""
    cls, cfg = resolve_task_config(name, options, type_defaults, class_names)
    return cls.from_config(name, cfg, class_names)


def build_tasks(
    options: Mapping[str, Mapping[str, Any]],
    type_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    class_names: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Task]:
    """The task objects of ``{task name: options}`` (a model config's ``tasks``), in order;
    ``class_names`` maps task names to their dataset's classes."""
    class_names = class_names or {}
    return {name: build_task(name, opts, type_defaults, class_names.get(name)) for name, opts in options.items()}


def task_options(task: Task) -> dict[str, Any]:
    """The task's full options as a plain dict with its ``type`` (round-trips through ``build_task``)."""
    return {"type": task.type_name, **to_dict(task.config)}


def array_difference(got: Any, ref: Any, tolerance: float) -> tuple[float, float]:
    """(difference, limit) of two arrays of the same shape: for floats the largest absolute
    difference, allowed up to ``tolerance`` times the magnitude of ``ref`` (at least 1: pixels are
    not probabilities); for integers the share of differing elements, allowed up to 0.1%."""
    import numpy as np

    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return float("inf"), 0.0
    if not ref.size:
        return 0.0, 0.0
    if np.issubdtype(ref.dtype, np.floating):
        return float(np.abs(got.astype(np.float64) - ref).max()), tolerance * max(1.0, float(np.abs(ref).max()))
    return float((got != ref).mean()), 1e-3


def jsonable(x: Any) -> Any:
    import numpy as np

    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().tolist()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x
