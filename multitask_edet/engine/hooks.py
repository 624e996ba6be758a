"""What happens around the training step (detectron2-style hooks), issue 5 items 2–4.

Order matters and is the order of registration in engine/build.py: EMA update → LR
schedule → evaluation → checkpoint → logging. Every hook runs on every rank (evaluation
and checkpoint gathering are collective); only rank 0 writes files.

Run folder (issue 5 item 3)::

    config.yaml        the resolved experiment config
    metrics.jsonl      one JSON object per logged step / evaluation
    tb/                TensorBoard events
    last.pt, best.pt   full training state (torch.load(weights_only=True) reads them)
    model.safetensors  release weights (EMA when used) + config in the metadata
    eval/              evaluation reports (JSON + text tables) per evaluation
    skipped.json       samples skipped under data.on_error=skip (when there were any)
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..errors import CheckpointError, NonFiniteError
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, save_safetensors, set_rng_state
from .distributed import all_gather_object, is_main_process, unwrap, world_size
from .step_guard import all_finite
from .trainer import Hook

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- checkpoints

class Checkpointer:
    """Gathers the whole training state and writes/reads it (rank 0 writes)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        trainer,
        scheduler=None,
        ema=None,
        config: Mapping[str, Any] | None = None,
        class_names: Mapping[str, list[str]] | None = None,
        extra_state: Mapping[str, Any] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.trainer = trainer
        self.scheduler = scheduler
        self.ema = ema
        self.config = dict(config or {})
        self.class_names = {k: list(v) for k, v in (class_names or {}).items()}
        #: name → object with state_dict()/load_state_dict() (hooks with state, e.g. best metric)
        self.extra_state = dict(extra_state or {})
        self.last_saved_step = -1

    def release_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights for release/evaluation: the EMA's when EMA is on."""
        src = self.ema.module if self.ema is not None else unwrap(self.trainer.model)
        return src.state_dict()

    def payload(self, gather: bool = True) -> dict[str, Any]:
        t = self.trainer
        # every rank's RNG state, so a resumed multi-process run continues every stream
        rngs = all_gather_object(rng_state()) if gather else [rng_state()]
        out: dict[str, Any] = {
            "config": self.config,
            "class_names": self.class_names,
            "model": unwrap(t.model).state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "weighting": t.weighting.state_dict(),
            "state": t.progress_state(),
            "sampler": {"seed": t.loader.seed, "epoch": t.epoch, "start_batch": t.iter_in_epoch, "world_size": world_size()},
            "rng": rngs,
            "hooks": {k: v.state_dict() for k, v in self.extra_state.items()},
        }
        if self.ema is not None:
            out["ema"] = self.ema.module.state_dict()
        if self.scheduler is not None:
            out["scheduler"] = self.scheduler.state_dict()
        if t.scaler is not None:
            out["scaler"] = t.scaler.state_dict()
        return out

    def save(self, name: str = "last.pt", gather: bool = True) -> Path | None:
        payload = self.payload(gather)
        path = self.run_dir / name
        if is_main_process():
            _refuse_nonfinite(path, {"model": payload["model"], "ema": payload.get("ema", {})})
            save_checkpoint(path, payload)
        if name == "last.pt":
            self.last_saved_step = self.trainer.step
        return path

    def save_release(self) -> Path | None:
        if not is_main_process():
            return None
        meta = {"config": self.config, "class_names": self.class_names, "step": self.trainer.step}
        path = self.run_dir / "model.safetensors"
        state = self.release_state_dict()
        _refuse_nonfinite(path, {"weights": state})
        return save_safetensors(path, state, meta)

    def resume(self, path: str | Path) -> dict[str, Any]:
        """Restore everything from ``path`` (all ranks read it); returns the checkpoint."""
        ckpt = load_checkpoint(path)
        t = self.trainer
        try:
            unwrap(t.model).load_state_dict(ckpt["model"])
            if self.ema is not None and "ema" in ckpt:
                self.ema.module.load_state_dict(ckpt["ema"])
            t.optimizer.load_state_dict(ckpt["optimizer"])
            if "weighting" in ckpt:
                t.weighting.load_state_dict(ckpt["weighting"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"checkpoint {path} does not fit this run ({str(e).splitlines()[0][:300]}); "
                "resume with the config it was written with (config.yaml of its run folder)"
            ) from None
        if self.scheduler is not None and "scheduler" in ckpt:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if t.scaler is not None and "scaler" in ckpt:
            t.scaler.load_state_dict(ckpt["scaler"])
        t.load_progress_state(ckpt["state"])
        for k, obj in self.extra_state.items():
            if k in ckpt.get("hooks", {}):
                obj.load_state_dict(ckpt["hooks"][k])
        rngs = ckpt.get("rng") or []
        saved_world = ckpt.get("sampler", {}).get("world_size", 1)
        if saved_world != world_size():
            log.warning(
                "checkpoint was written by %d process(es), this run has %d: training continues, "
                "but not sample-for-sample as the interrupted run would have", saved_world, world_size())
        rank = torch.distributed.get_rank() if world_size() > 1 else 0
        if rank < len(rngs):
            set_rng_state(rngs[rank])
        self.last_saved_step = t.step
        return ckpt


def _refuse_nonfinite(path: Path, parts: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Never write NaN/inf weights: raise, and the previous file at ``path`` stays as it was."""
    if all_finite(v for sd in parts.values() for v in sd.values() if torch.is_tensor(v)):
        return
    bad = [f"{part}.{k}" for part, sd in parts.items() for k, v in sd.items()
           if torch.is_tensor(v) and v.is_floating_point() and not all_finite([v])]
    if bad:
        raise NonFiniteError(
            f"not writing {path}: {len(bad)} weight tensor(s) hold NaN/inf ({', '.join(bad[:3])}"
            f"{' …' if len(bad) > 3 else ''}); the previous {path.name}, if any, is kept"
        )


class CheckpointHook(Hook):
    """``last.pt`` at every epoch end, every N steps, and whenever the run stops.

    A run that ends before its first step completed writes nothing: its state is the
    initialisation, and a ``last.pt`` of it would only make re-running the command refuse.
    """

    def __init__(self, checkpointer: Checkpointer, every_steps: int = 0):
        self.ckpt = checkpointer
        self.every_steps = every_steps

    def after_step(self) -> None:
        t = self.trainer
        periodic = self.every_steps > 0 and t.step % self.every_steps == 0
        if t.epoch_end or periodic or t.stopping:
            self.ckpt.save("last.pt")

    def after_train(self) -> None:
        t = self.trainer
        if t.step == 0:
            return  # failed before the first step: nothing worth keeping, nothing to block a re-run
        ending_by_error = sys.exc_info()[1] is not None  # called from the trainer's `finally`
        try:
            if self.ckpt.last_saved_step != t.step:
                # an exception ended the run: other ranks may be gone, so no collective gather
                self.ckpt.save("last.pt", gather=False)
            self.ckpt.save_release()
        except NonFiniteError as e:
            if not ending_by_error:
                raise
            log.error("%s", e)  # said, not raised: the exception that ended the run stays the one reported


# ---------------------------------------------------------------------------- EMA + LR

class EMAHook(Hook):
    """timm ModelEmaV3 of the weights, updated after every applied step (paper: 0.9998)."""

    def __init__(self, ema):
        self.ema = ema

    def after_step(self) -> None:
        if self.trainer.step_applied:
            self.ema.update(unwrap(self.trainer.model), step=self.trainer.step)


class LRSchedulerHook(Hook):
    """Per-iteration schedule (skipped steps advance it too: it follows the data, not updates)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def after_step(self) -> None:
        with warnings.catch_warnings():
            # a skipped (non-finite) first step makes torch warn about the call order; intended here
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()


# ---------------------------------------------------------------------------- evaluation

class EvalHook(Hook):
    """Evaluate every N epochs / N steps and at the end; keep ``best.pt`` by the main metric.

    ``eval_fn()`` returns ``({task: {metric: value}}, {task: evaluator})`` on every rank (the
    evaluators sync, so all ranks agree); the ``main_metric`` of ``main_task``'s evaluator
    (det: AP, or AP50 under the VOC protocol; seg: mIoU) ranks the checkpoints.
    """

    def __init__(
        self,
        eval_fn: Callable[[], tuple[dict[str, dict[str, float]], dict[str, Any]]],
        main_task: str,
        checkpointer: Checkpointer | None,
        logger: "MetricsLogger | None" = None,
        every_epochs: int = 1,
        every_steps: int = 0,
        report_dir: str | Path | None = None,
    ):
        self.eval_fn = eval_fn
        self.main_task = main_task
        self.ckpt = checkpointer
        self.logger = logger
        self.every_epochs = every_epochs
        self.every_steps = every_steps
        self.report_dir = Path(report_dir) if report_dir else None
        self.best = -math.inf
        self.best_step = -1
        self.last_eval_step = -1
        self.last_results: dict[str, dict[str, float]] = {}
        self.last_evaluators: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "last_eval_step": self.last_eval_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_step = int(state["best_step"])
        self.last_eval_step = int(state.get("last_eval_step", -1))

    def due(self) -> bool:
        t = self.trainer
        if t.stopping and t.stop_reason != "finished":
            return False  # interrupted or failing: checkpoint now, evaluate later
        if t.stop_reason == "finished":
            return True
        if t.epoch_end and self.every_epochs > 0 and t.epoch % self.every_epochs == 0:
            return True
        return self.every_steps > 0 and t.step % self.every_steps == 0

    def after_step(self) -> None:
        if self.due() and self.last_eval_step != self.trainer.step:
            self.run()

    def run(self) -> dict[str, dict[str, float]]:
        from .evaluate import format_report, save_pictures

        t = self.trainer
        start = time.perf_counter()
        try:
            results, evaluators = self.eval_fn()
        except NonFiniteError as e:
            # the model's outputs were all NaN/inf: no score (so no best.pt from it), said and logged
            self.last_eval_step = t.step
            if is_main_process():
                print(f"evaluation at step {t.step} (epoch {t.epoch}): no score: {e}", flush=True)
                if self.logger is not None:
                    self.logger.log_eval({"nonfinite_outputs": 1.0}, seconds=time.perf_counter() - start)
            return {}
        self.last_results, self.last_evaluators = results, evaluators
        self.last_eval_step = t.step
        main_key = getattr(evaluators.get(self.main_task), "main_metric", "")
        value = results.get(self.main_task, {}).get(main_key, float("nan"))
        improved = not math.isnan(value) and value > self.best
        if improved:
            self.best, self.best_step = value, t.step
        if is_main_process():
            report = format_report(evaluators)
            flat = {f"{task}/{k}": v for task, m in results.items() for k, v in m.items()}
            print(f"evaluation at step {t.step} (epoch {t.epoch}):\n{report}", flush=True)
            if self.logger is not None:
                self.logger.log_eval(flat, seconds=time.perf_counter() - start)
            if self.report_dir is not None:
                self.report_dir.mkdir(parents=True, exist_ok=True)
                stem = self.report_dir / f"step-{t.step:08d}"
                rec = {"step": t.step, "epoch": t.epoch, "metrics": results, "main_metric": f"{self.main_task}/{main_key}",
                       "best": self.best, "best_step": self.best_step}
                stem.with_suffix(".json").write_text(json.dumps(rec, indent=2, default=float))
                stem.with_suffix(".txt").write_text(report + "\n")
                if t.stop_reason == "finished":
                    save_pictures(evaluators, self.report_dir)
        if improved and self.ckpt is not None:
            self.ckpt.save("best.pt")
        return results


# ---------------------------------------------------------------------------- logging

class MetricsLogger(Hook):
    """metrics.jsonl + TensorBoard + a progress bar (terminal) or plain log lines (rank 0)."""

    def __init__(
        self,
        run_dir: str | Path,
        every_steps: int = 20,
        tensorboard: bool = True,
        progress: str = "auto",
        global_batch: int = 1,
        stream=None,
    ):
        self.run_dir = Path(run_dir)
        self.every_steps = every_steps
        self.tensorboard = tensorboard
        self.stream = stream or sys.stderr
        self.progress = progress
        self.global_batch = global_batch
        self.main = is_main_process()
        self._tb = None
        self._bar = None
        self._file = None
        self._t_start = 0.0
        self._step_start = 0
        self._window: list[float] = []

    # -- lifecycle
    def before_train(self) -> None:
        if not self.main:
            return
        t = self.trainer
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        truncate_metrics(path, t.step)
        self._file = open(path, "a", buffering=1)
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=t.step if t.step else None)
        mode = self.progress
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "plain"
        self.progress = mode
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=t.max_steps, initial=t.step, file=self.stream, dynamic_ncols=True, unit="it")
        self._t_start = time.perf_counter()
        self._step_start = t.step

    def after_step(self) -> None:
        if not self.main:
            return
        t = self.trainer
        m = t.step_metrics
        if "step_time" in m:
            self._window = (self._window + [m["step_time"]])[-50:]
        if self._bar is not None:
            self._bar.update(1)
            if "loss" in m:
                self._bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m.get('lr', 0):.2e}", img_s=f"{self._throughput():.1f}")
        if t.step % self.every_steps == 0 or t.stopping:
            rec = {"type": "train", "step": t.step, "epoch": t.epoch, "iter_in_epoch": t.iter_in_epoch, **m,
                   "img_per_s": self._throughput(), "time": time.time()}
            self._file.write(json.dumps(rec) + "\n")
            if self._tb is not None:
                for k, v in m.items():
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        self._tb.add_scalar(f"train/{k}", v, t.step)
            if self.progress == "plain":
                print(self._line(m), file=self.stream, flush=True)

    def after_train(self) -> None:
        if not self.main:
            return
        t = self.trainer
        if self._bar is not None:
            self._bar.close()
        if t.stop_reason == "signal":
            print(f"stopped by signal at step {t.step}; resume with --resume", file=self.stream, flush=True)
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()

    def log_eval(self, flat: Mapping[str, float], seconds: float) -> None:
        t = self.trainer
        if self._file is not None:
            self._file.write(json.dumps({"type": "eval", "step": t.step, "epoch": t.epoch, **flat, "eval_seconds": seconds,
                                         "time": time.time()}) + "\n")
        if self._tb is not None:
            for k, v in flat.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"eval/{k}", v, t.step)

    # -- formatting
    def _throughput(self) -> float:
        if not self._window:
            return 0.0
        return self.global_batch / (sum(self._window) / len(self._window))

    def _line(self, m: Mapping[str, float]) -> str:
        t = self.trainer
        parts = [f"step {t.step}/{t.max_steps}", f"epoch {t.epoch}"]
        if "loss" in m:
            parts.append(f"loss {m['loss']:.4f}")
        tasks = [f"{k[5:]} {v:.4f}" for k, v in m.items() if k.startswith("loss/") and k.count("/") == 1]
        if tasks:
            parts.append("(" + ", ".join(tasks) + ")")
        if "lr" in m:
            parts.append(f"lr {m['lr']:.3e}")
        parts.append(f"{self._throughput():.1f} img/s")
        done = t.step - self._step_start
        if done > 0:
            eta = (time.perf_counter() - self._t_start) / done * (t.max_steps - t.step)
            parts.append(f"eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        if t.nonfinite_total:
            parts.append(f"non-finite {t.nonfinite_total}")
        return "  ".join(parts)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records past ``step``: a run resumed from a checkpoint at ``step`` logs them again."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if rec.get("step", 0) <= step:
            keep.append(line)
    if len(keep) != len(lines):
        from .checkpoint import atomic_write

        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(k + "\n" for k in keep)))


__all__ = ["Checkpointer", "CheckpointHook", "EMAHook", "EvalHook", "LRSchedulerHook", "MetricsLogger"]
