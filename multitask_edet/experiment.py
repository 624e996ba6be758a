"""The Python API for joint-trunk experiments: a whole experiment in a notebook cell.

``Experiment`` is a thin layer over the engine: its keyword arguments become a validated
``ExperimentConfig`` (engine/config.py) — the same object ``mtedet train`` builds from a recipe
and ``--set`` overrides, through the same mapping of named settings — and ``train``/
``evaluate``/``predict`` call the functions ``mtedet train``/``eval``/``predict`` call.
Anything the API does not name is reachable through the config sections (``train={...}``,
``data={...}``, ``eval={...}``) and each task's own section (``det={...}``, ``seg={...}``,
``drivable={"type": "seg", ...}``).

    exp = Experiment(tasks=["det", "seg"], dataset="shapes", model="test-efficientdet",
                     weighting="uncertainty", freeze=["backbone.body.conv_stem"],
                     lr_mult={"neck": 2.0}, output="runs/joint", max_steps=300)
    exp.train()
    exp.evaluate()
    exp.predict(["image.jpg"])

A task of your own joins by registering its type (``register_task``) and listing it in
``tasks``; see examples/custom_head.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .errors import CheckpointError, ConfigError

#: keyword settings besides the explicit arguments (engine/config.py ``OVERRIDE_PATHS``)
_TRAIN_KEYS = ("epochs", "max_steps", "batch_size", "lr", "base_lr", "seed", "device", "optimizer", "ema", "amp")


class Experiment:
    """Model + tasks + data + recipe, trained, evaluated and used for prediction."""

    def __init__(
        self,
        config: str | Path | None = None,
        *,
        tasks: Sequence[str] | str | None = None,
        model: str | Mapping[str, Any] | None = None,
        dataset: str | Mapping[str, str] | None = None,
        data_root: str | Path | None = None,
        image_size: int | Sequence[int] | None = None,
        weighting: str | None = None,
        loss_weights: Mapping[str, float] | None = None,
        freeze: Sequence[str] | None = None,
        lr_mult: Mapping[str, float] | None = None,
        mix_ratio: Mapping[str, float] | None = None,
        output: str | Path | None = None,
        workers: int | None = None,
        overrides: Sequence[str] = (),
        **options: Any,
    ):
        """
        Args:
            config: a shipped recipe name (``mtedet train --help`` lists them) or a YAML file;
                None = the default recipe for the tasks and dataset.
            tasks: ``["det", "seg"]``, ``"det,seg"``, or names of registered custom tasks.
            model: a variant name (``list_models()``) or the model section as a dict, e.g.
                ``{"name": "efficientdet-d0", "backbone": {"name": "efficientnet_b1"},
                "neck": {"channels": 96, "repeats": 4}}``; a head's shape is its task's option
                (``seg={"channels": 128}``).
            dataset: a dataset name, ``"coco+voc2012"`` (one per task, in task order), or
                ``{"det": "coco", "seg": "voc2012"}`` for mixed-dataset training.
            weighting: ``fixed`` | ``uncertainty`` | ``dwa`` (engine/weighting.py).
            loss_weights: fixed per-task weights (also the base weights of the other rules).
            freeze: parts to freeze: ``backbone``, ``neck``, a task name, or a module path.
            lr_mult: learning-rate multipliers per part, e.g. ``{"backbone": 0.1}``.
            mix_ratio: mixed datasets: batches per task, e.g. ``{"det": 3, "seg": 1}``.
            overrides: ``"a.b=c"`` strings, as ``mtedet train --set``.
            options: ``epochs``, ``max_steps``, ``batch_size``, ``lr``, ``base_lr``, ``seed``,
                ``device``, ``optimizer``, ``ema``, ``amp``, or whole config sections as dicts
                (``train``, ``data``, ``eval``, ``log``, and each task's: ``det``, ``seg``, ...).
        """
        from .engine.config import build_config, deep_merge, experiment_overrides

        named = {k: options.pop(k) for k in _TRAIN_KEYS if k in options}
        model_sections = None
        if model is not None and not isinstance(model, str):
            model_sections, model = dict(model), None
        sections = experiment_overrides(
            model=model, image_size=image_size, dataset=dataset, data_root=data_root, mix_ratio=mix_ratio,
            workers=workers, weighting=weighting, loss_weights=loss_weights, freeze=freeze, lr_mult=lr_mult,
            output=output, **named,
        )  # fmt: skip
        if model_sections is not None:
            sections = deep_merge({"model": model_sections}, sections)
        for name, section in options.items():
            if not isinstance(section, Mapping):
                raise ConfigError(
                    f"Experiment got {name}={section!r}; keyword options are {', '.join(_TRAIN_KEYS)} "
                    "or whole config sections given as dicts (train, data, eval, log, or a task's section such as det)"
                )
            sections = deep_merge({name: dict(section)}, sections)
        if isinstance(tasks, str):
            tasks = [t.strip() for t in tasks.split(",") if t.strip()]
        self.config = build_config(config, tasks=tasks, overrides=sections, set_items=overrides)
        self._overrides: dict[str, Any] = {}
        self.result = None
        self._trained = None
        self._checkpoint: Path | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, **sections: Mapping[str, Any]) -> "Experiment":
        """An experiment around a trained checkpoint (``best.pt``, ``last.pt``, ``model.safetensors``).

        ``sections`` change its saved config for evaluation and prediction, as ``mtedet eval
        --set`` does: ``from_checkpoint(path, seg={"flip_test": True})``.
        """
        from .engine.checkpoint import load_weights
        from .engine.config import config_from_dict, deep_merge

        _, info = load_weights(path)
        if not info.get("config"):
            raise CheckpointError(f"{path} carries no experiment config; it was not written by `mtedet train`")
        exp = cls.__new__(cls)
        exp._overrides = {k: dict(v) for k, v in sections.items()}
        exp.config = config_from_dict(deep_merge(info["config"], exp._overrides))
        exp.result, exp._trained, exp._checkpoint = None, None, Path(path)
        return exp

    # ------------------------------------------------------------------ properties
    @property
    def run_dir(self) -> Path:
        return self.config.run_dir()

    @property
    def checkpoint(self) -> Path:
        """The weights ``evaluate``/``predict`` use: the best checkpoint, else the release weights."""
        if self._checkpoint is not None:
            return self._checkpoint
        for name in ("best.pt", "model.safetensors", "last.pt"):
            if (self.run_dir / name).is_file():
                return self.run_dir / name
        raise CheckpointError(f"no trained weights in {self.run_dir}: call train() first (or from_checkpoint)")

    @property
    def model(self) -> torch.nn.Module:
        return self.load().model

    # ------------------------------------------------------------------ actions
    def train(self, resume: bool = False):
        """Train as configured (``resume=True`` continues the run folder's ``last.pt``)."""
        from .engine.run import run_training

        self.result = run_training(self.config, resume=self.run_dir / "last.pt" if resume else None)
        self._trained, self._checkpoint = None, None
        return self.result

    def load(self, checkpoint: str | Path | None = None, device: str = "cpu"):
        """The trained model and its tasks (``engine.builders.Trained``), cached."""
        from .engine.builders import load_for_inference

        if checkpoint is not None:
            self._checkpoint, self._trained = Path(checkpoint), None
        if self._trained is None:
            self._trained = load_for_inference(self.checkpoint, self._overrides, device=device)
        return self._trained

    def evaluate(
        self,
        split: str | None = None,
        max_images: int | None = None,
        batch_size: int | None = None,
        verbose: bool = True,
    ) -> dict[str, dict[str, float]]:
        """Metrics per task on the validation split (or ``split``); prints the tables.

        The same computation as ``mtedet eval`` (engine/evaluate.py ``evaluate_trained``): the
        same checkpoint gives the same metrics either way.
        """
        from .engine.evaluate import evaluate_trained
        from .engine.reports import format_report

        trained = self.load()
        device = next(trained.model.parameters()).device
        results, evaluators = evaluate_trained(trained, device=device, split=split, batch_size=batch_size,
                                               max_images=max_images)
        if verbose:
            print(format_report(evaluators), flush=True)
        return results

    def predict(self, images: Sequence[str | Path | np.ndarray], batch_size: int = 8) -> list[dict[str, Any]]:
        """Per image ``{task: prediction}`` in the image's own pixels.

        A detection task: ``{"boxes" (K, 4) xyxy, "scores", "labels", "classes"}``; a segmentation
        task: an (H, W) class-index array; a custom task: what its ``predict`` returns.
        """
        from .engine.predict import predict_images

        trained = self.load()
        out: list[dict[str, Any]] = []
        for _, preds in predict_images(trained, list(images), batch_size):
            rec: dict[str, Any] = {}
            for t, p in preds.items():
                names = trained.tasks[t].class_names or []
                if isinstance(p, dict):
                    p = {key: v.cpu().numpy() if isinstance(v, torch.Tensor) else v for key, v in p.items()}
                    if "labels" in p:
                        p["classes"] = [names[i] if i < len(names) else str(i) for i in p["labels"]]
                elif isinstance(p, torch.Tensor):
                    p = p.cpu().numpy()
                rec[t] = p
            out.append(rec)
        return out

    def save_overlays(self, images: Sequence[str | Path], out_dir: str | Path, score_threshold: float = 0.3) -> list[Path]:
        """Overlay pictures (mask colours, boxes, labels) + JSON per image, as ``mtedet predict``."""
        from .engine.predict import run_prediction

        records = run_prediction(self.checkpoint, list(images), out_dir, score_threshold=score_threshold,
                                 device=str(next(self.model.parameters()).device))
        return [Path(out_dir) / r["overlay"] for r in records if "overlay" in r]

    def __repr__(self) -> str:
        c = self.config
        return (f"Experiment(tasks={list(c.tasks)}, model={c.model.name!r}, dataset={c.data.dataset!r}, "
                f"weighting={c.train.loss_weighting!r}, output={str(self.run_dir)!r})")
