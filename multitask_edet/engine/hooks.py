"""What happens around the training step (detectron2-style hooks).

Order matters and is the order of registration in engine/run.py: EMA update → LR
schedule → evaluation → checkpoint → logging. Every hook runs on every rank (evaluation
and checkpoint gathering are collective); only rank 0 writes files.

Run folder::

    config.yaml        the resolved experiment config, headed by a comment saying where the initial weights came from
    metrics.jsonl      one JSON object per logged step / evaluation
    tb/                TensorBoard events
    last.pt, best.pt   full training state (torch.load(weights_only=True) reads them)
    model.safetensors  release weights (EMA when used) + config in the metadata, with
    config.json, README.md  the model's config and model card: a pretrained folder (hub.py)
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

from ..errors import NonFiniteError
from .checkpointer import Checkpointer
from .distributed import is_main_process, unwrap
from .trainer import Hook

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- checkpoints

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
        from .reports import format_report, save_pictures

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
