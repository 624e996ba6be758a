"""``Checkpointer``: a training run's whole state gathered into checkpoints and restored from them.

What goes in a training checkpoint (engine/checkpoint.py writes and reads the files): model,
EMA, optimizer, scheduler and scaler state, progress counters, every rank's RNG state, the
hooks' state (best metric), the resolved experiment and model configs and the class names.
The release weights (EMA when used) are written as a pretrained folder (multitask_edet/hub.py):
the run folder is one command away from being shared.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError, NonFiniteError
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .distributed import all_gather_object, is_main_process, unwrap, world_size
from .step_guard import all_finite

log = logging.getLogger(__name__)


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
        model_config: Mapping[str, Any] | None = None,
        extra_state: Mapping[str, Any] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.trainer = trainer
        self.scheduler = scheduler
        self.ema = ema
        self.config = dict(config or {})
        self.class_names = {k: list(v) for k, v in (class_names or {}).items()}
        #: the resolved model config (every task's full options, input normalisation): what
        #: rebuilds the network without the experiment config
        self.model_config = dict(model_config or {})
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
            "model_config": self.model_config,
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
        """The run folder as a pretrained folder (multitask_edet/hub.py): model.safetensors (EMA
        weights when used), config.json and a model card with the metrics of these weights when
        the run evaluated them at this step."""
        if not is_main_process():
            return None
        from ..hub import WEIGHTS_FILE, pretrained_info, write_pretrained

        ev = self.extra_state.get("eval")
        evaluated = ev is not None and getattr(ev, "last_eval_step", -1) == self.trainer.step
        info = pretrained_info(self.model_config, self.class_names, self.config, self.trainer.step,
                               ev.last_results if evaluated else None)
        state = self.release_state_dict()
        _refuse_nonfinite(self.run_dir / WEIGHTS_FILE, {"weights": state})
        write_pretrained(self.run_dir, state, info)
        return self.run_dir / WEIGHTS_FILE

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
