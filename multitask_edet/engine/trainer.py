"""The training loop (detectron2's shape; the paper's §5.1 recipe comes in through the hooks).

One step: batch → images normalised on the device → ``model(images)`` → each task's named
losses → loss weighting → backward → clip → optimizer step. Everything else — EMA, LR
schedule, evaluation, checkpoints, logging — is a hook (engine/hooks.py) called after
every step, so the loop stays this small.

Robustness:

- a step that meets a non-finite number — the total loss, the BatchNorm statistics its
  forward pass updated, the gradients, or the weights after the update — is undone (the
  parameters, buffers and optimizer state of before the step come back, engine/step_guard.py)
  and counted; after ``max_nonfinite`` such steps in a row the run stops with a message that
  says which step the weights in the checkpoint are from. The weights in memory, and so in
  every checkpoint, are always those of the last finite update;
- SIGINT / SIGTERM set a flag; the current step finishes, the hooks write a checkpoint and
  the loop ends (a second SIGINT interrupts at once);
- the progress counters (step, epoch, iteration in the epoch) advance only after a
  complete step, so a checkpoint always describes a step boundary; resuming positions the
  sampler there and the run continues exactly.

Under DDP every rank must take the same branch: one small all-reduce per step merges the
"non-finite", "stop requested" and "task present in the batch" flags of all ranks (the
gradients and the updated weights are the same on every rank, so their checks agree).
"""
from __future__ import annotations

import logging
import signal
import time
from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from ..errors import NonFiniteError
from ..tasks.base import Task
from .distributed import ResumableLoader, unwrap, world_size
from .inference import autocast, model_images, to_float
from .param_groups import drop_absent_task_grads, keep_buffers, task_heads
from .step_guard import StepGuard, all_finite
from .weighting import LossWeighting, sum_task_losses

log = logging.getLogger(__name__)


class NonFiniteLossError(NonFiniteError, RuntimeError):
    """Training stopped: too many steps in a row had a non-finite loss, gradient or weight."""


class Hook:
    """Called by the trainer; override what you need. ``trainer`` is set on registration."""

    trainer: "Trainer"

    def before_train(self) -> None: ...

    def after_step(self) -> None: ...

    def after_train(self) -> None: ...


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        tasks: Mapping[str, Task],
        optimizer: torch.optim.Optimizer,
        loader: ResumableLoader,
        *,
        device: torch.device,
        max_steps: int,
        weighting: LossWeighting | None = None,
        scaler: torch.amp.GradScaler | None = None,
        amp_dtype: torch.dtype | None = None,
        clip_grad_norm: float | None = None,
        channels_last: bool = False,
        max_nonfinite: int = 20,
        loss_tasks: Iterable[str] | None = None,
        hooks: Iterable[Hook] = (),
    ):
        self.model = model
        self.tasks = dict(tasks)
        #: tasks whose loss is computed (a frozen task's head is left out, param_groups.frozen_tasks)
        self.loss_tasks = list(loss_tasks) if loss_tasks is not None else list(self.tasks)
        self.optimizer = optimizer
        self.loader = loader
        self.device = device
        self.max_steps = int(max_steps)
        self.weighting = weighting if weighting is not None else LossWeighting(self.loss_tasks).to(device)
        self.scaler = scaler
        self.amp_dtype = amp_dtype
        self.clip_grad_norm = clip_grad_norm
        self.channels_last = channels_last
        self.max_nonfinite = max_nonfinite
        # progress: counters advance only after a complete step
        self.step = 0
        self.epoch = 0
        self.iter_in_epoch = 0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        #: what was non-finite in the current streak of undone steps ("loss", "gradients", ...)
        self.nonfinite_kinds: list[str] = []
        #: the value of ``step`` after the last update that was applied (finite), 0 before any
        self.last_finite_step = 0
        self.guard = StepGuard(unwrap(model), optimizer)
        #: set by the step: whether the last step updated the weights, and its metrics
        self.step_applied = False
        self.step_metrics: dict[str, float] = {}
        #: true right after the last iteration of an epoch (hooks evaluate/checkpoint then)
        self.epoch_end = False
        self.stop_reason: str | None = None
        self.skipped_samples: dict[str, dict[str, Any]] = {}
        self._signal_count = 0
        self._stop_local = False
        self.hooks: list[Hook] = []
        self.register_hooks(hooks)

    # ------------------------------------------------------------------ hooks
    def register_hooks(self, hooks: Iterable[Hook]) -> None:
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)

    def _call(self, stage: str) -> None:
        for h in self.hooks:
            getattr(h, stage)()

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    # ------------------------------------------------------------------ loop
    def train(self) -> None:
        old = self._install_signal_handlers()
        try:
            self._call("before_train")
            while self.step < self.max_steps and not self.stopping:
                self._run_epoch()
        finally:
            self._restore_signal_handlers(old)
            self._call("after_train")
        if self.stop_reason and self.stop_reason.startswith("non-finite"):
            raise NonFiniteLossError(self.stop_reason)

    def _run_epoch(self) -> None:
        for batch in self.loader.iterate(self.epoch, self.iter_in_epoch):
            self._note_skipped(batch)
            self.run_step(batch)
            self.step += 1
            self.iter_in_epoch += 1
            self.epoch_end = self.iter_in_epoch >= len(self.loader)
            if self.epoch_end:
                self.epoch += 1
                self.iter_in_epoch = 0
                self.weighting.step_epoch()
            if self.step >= self.max_steps and self.stop_reason is None:
                self.stop_reason = "finished"
            self._call("after_step")
            self.epoch_end = False
            if self.stopping:
                return

    def run_step(self, batch: dict[str, Any]) -> None:
        """One optimisation step; sets ``step_applied`` and ``step_metrics``."""
        present_local = [bool(self.tasks[t].has_targets(batch).any()) for t in self.loss_tasks]
        # a head whose task this batch lacks keeps its BN statistics too (param_groups.keep_buffers);
        # restored after the backward, which still needs the forward's buffers
        absent_heads = task_heads(self.model, [t for t, p in zip(self.loss_tasks, present_local) if not p])
        with keep_buffers(absent_heads):
            self._run_step(batch, present_local)

    def _run_step(self, batch: dict[str, Any], present_local: list[bool]) -> None:
        self.model.train()
        t0 = time.perf_counter()
        self.guard.save()  # before the forward pass, which updates the BatchNorm statistics
        images = model_images(self.model, batch["images"], self.device, channels_last=self.channels_last)
        with autocast(self.device, self.amp_dtype):
            outputs = self.model(images)
        outputs = to_float(outputs)
        loss_dicts = {t: self.tasks[t].loss(outputs[t], batch) for t in self.loss_tasks}
        task_losses, metrics = sum_task_losses(loss_dicts)

        total = None
        nonfinite_local = False
        # the weighting of an all-absent batch is undefined: nothing to learn from it
        if any(present_local):
            total, wlog = self.weighting(task_losses, present=[t for t, p in zip(self.loss_tasks, present_local) if p])
            metrics.update(wlog)
            nonfinite_local = not bool(torch.isfinite(total.detach()))
        # BatchNorm statistics differ per rank: checked here, so that the flag sync below covers them
        kind = "loss" if nonfinite_local else ("BatchNorm statistics" if not self.guard.buffers_finite() else "")
        nonfinite, stop, present = self._sync_flags(bool(kind), self._stop_local, present_local)
        if stop and self.stop_reason is None:
            self.stop_reason = "signal"

        self.step_applied = False
        if nonfinite or not any(present):
            self.optimizer.zero_grad(set_to_none=True)
            if nonfinite:
                self._undo_step(kind or "loss or BatchNorm statistics (on another process)", metrics)
            self.step_metrics = metrics
            return

        if total is None:
            # this rank's batch lacks every task another rank has: a zero loss keeps DDP in step
            total = sum(v.sum() * 0.0 for v in task_losses.values())
        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()
        self.weighting.sync_grads()
        absent = [t for t, p in zip(self.loss_tasks, present) if not p]
        drop_absent_task_grads(unwrap(self.model), absent, self.weighting)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.clip_grad_norm:
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
            metrics["grad_norm"] = float(norm)
        # with an fp16 GradScaler, inf gradients are its routine overflow signal: it skips the update itself
        if self.scaler is None and not all_finite(grads):
            self.optimizer.zero_grad(set_to_none=True)
            self._undo_step("gradients", metrics)
            self.step_metrics = metrics
            return
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # fp16 overflow: the scaler skipped the update and lowered the scale
            self.step_applied = self.scaler.get_scale() >= scale
        else:
            self.optimizer.step()
            self.step_applied = True
        self.optimizer.zero_grad(set_to_none=True)
        if self.step_applied and not self.guard.params_finite():  # buffers were checked before, and did not change
            self.step_applied = False
            self._undo_step("weights after the update", metrics)
            self.step_metrics = metrics
            return
        self.nonfinite_in_row, self.nonfinite_kinds = 0, []
        if self.step_applied:
            self.last_finite_step = self.step + 1
        metrics["loss"] = float(total.detach())
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["step_time"] = time.perf_counter() - t0
        self.step_metrics = metrics

    def _undo_step(self, kind: str, metrics: dict[str, float]) -> None:
        """A step met non-finite ``kind``: put the state of before it back, count it, maybe stop."""
        self.guard.restore()
        metrics.pop("grad_norm", None)  # of gradients that were thrown away
        self.nonfinite_in_row += 1
        self.nonfinite_total += 1
        if kind not in self.nonfinite_kinds:
            self.nonfinite_kinds.append(kind)
        metrics["nonfinite"] = float(self.nonfinite_total)
        # steps are numbered from 1 in messages, as in the progress lines and checkpoints
        log.warning("non-finite %s in step %d (%d in a row): step undone", kind, self.step + 1, self.nonfinite_in_row)
        if self.nonfinite_in_row >= self.max_nonfinite and self.stop_reason is None:
            held = (f"the weights of step {self.last_finite_step}, the last finite update" if self.last_finite_step
                    else "the initial weights (no update was finite)")
            self.stop_reason = (
                f"non-finite {'/'.join(self.nonfinite_kinds)} in {self.nonfinite_in_row} steps in a row (up to step "
                f"{self.step + 1}); lower train.base_lr, enable gradient clipping (train.clip_grad_norm) or check the data; "
                f"every failing step was undone, so last.pt (written after step {self.step + 1}) holds {held}"
            )

    def _sync_flags(self, nonfinite: bool, stop: bool, present: list[bool]) -> tuple[bool, bool, list[bool]]:
        if world_size() == 1:
            return nonfinite, stop, present
        t = torch.tensor([float(nonfinite), float(stop)] + [float(p) for p in present], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        v = t.tolist()
        return v[0] > 0, v[1] > 0, [x > 0 for x in v[2:]]

    def _note_skipped(self, batch: dict[str, Any]) -> None:
        for meta in batch.get("meta") or []:
            for entry in (meta or {}).get("skipped") or []:
                self.skipped_samples.setdefault(str(entry.get("file")), dict(entry))

    # ------------------------------------------------------------------ state
    def progress_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "iter_in_epoch": self.iter_in_epoch,
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_row": self.nonfinite_in_row,
            "last_finite_step": self.last_finite_step,
            "max_steps": self.max_steps,
        }

    def load_progress_state(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.iter_in_epoch = int(state["iter_in_epoch"])
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.nonfinite_in_row = int(state.get("nonfinite_in_row", 0))
        self.last_finite_step = int(state.get("last_finite_step", self.step))

    # ------------------------------------------------------------------ signals
    def request_stop(self) -> None:
        """Finish the current step, checkpoint, then end (what SIGINT/SIGTERM do)."""
        self._stop_local = True

    def _on_signal(self, signum, frame) -> None:
        self._signal_count += 1
        if signum == signal.SIGINT and self._signal_count > 1:
            raise KeyboardInterrupt
        log.warning("%s received: finishing this step, writing a checkpoint, then stopping", signal.Signals(signum).name)
        self.request_stop()

    def _install_signal_handlers(self) -> dict:
        old = {}
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                old[s] = signal.signal(s, self._on_signal)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return old

    def _restore_signal_handlers(self, old: dict) -> None:
        for s, h in old.items():
            signal.signal(s, h)
