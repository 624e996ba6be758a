"""Unit tests of the engine's small parts: LR schedule, checkpoints, samplers."""
from __future__ import annotations

import math
import os
import random

import numpy as np
import pytest
import torch

from multitask_edet.engine.checkpoint import (
    atomic_write, load_checkpoint, load_weights, rng_state, save_checkpoint, save_safetensors, set_rng_state,
)  # fmt: skip
from multitask_edet.engine.distributed import ResumableSampler, ShardSampler
from multitask_edet.engine.schedule import WarmupCosine, build_scheduler, scaled_lr
from multitask_edet.errors import CheckpointError


# ---------------------------------------------------------------- schedule

def test_warmup_then_cosine_values():
    f = WarmupCosine(warmup_steps=10, total_steps=110, start_factor=0.0, min_factor=0.0)
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)  # half-way through the cosine
    assert f(110) == pytest.approx(0.0, abs=1e-12) and f(500) == pytest.approx(0.0, abs=1e-12)
    g = WarmupCosine(0, 100, min_factor=0.1)
    assert g(0) == 1.0 and g(100) == pytest.approx(0.1)
    assert g(25) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_lr_scales_with_global_batch_and_groups_keep_their_ratio():
    assert scaled_lr(0.16, 128) == pytest.approx(0.16) and scaled_lr(0.16, 16) == pytest.approx(0.02)
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 0.1}, {"params": [p2], "lr": 0.01}], lr=0.1)
    sched = build_scheduler(opt, total_steps=20, warmup_steps=4, start_factor=0.0)
    lrs = []
    for _ in range(20):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[0] == [0.0, 0.0] and lrs[4] == pytest.approx([0.1, 0.01])
    assert all(a == pytest.approx(10 * b) for a, b in lrs)
    # the state dict is plain data (weights_only-safe) and restores the position
    sd = sched.state_dict()
    opt2 = torch.optim.SGD([{"params": [p1], "lr": 0.1}, {"params": [p2], "lr": 0.01}], lr=0.1)
    sched2 = build_scheduler(opt2, total_steps=20, warmup_steps=4, start_factor=0.0)
    sched2.load_state_dict(sd)
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_is_weights_only_and_atomic(tmp_path):
    path = tmp_path / "last.pt"
    payload = {"model": {"w": torch.arange(3.0)}, "state": {"step": 3}, "rng": [rng_state()], "config": {"a": [1, 2]}}
    save_checkpoint(path, payload)
    raw = torch.load(path, weights_only=True)
    assert raw["state"] == {"step": 3} and torch.equal(raw["model"]["w"], torch.arange(3.0))
    assert load_checkpoint(path)["config"] == {"a": [1, 2]}

    # a write that fails leaves the previous file intact and no temporary behind
    def boom(tmp):
        open(tmp, "wb").write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert load_checkpoint(path)["state"]["step"] == 3
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_bad_checkpoints_raise_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not an mtedet training checkpoint"):
        load_checkpoint(other)


def test_safetensors_release_weights_carry_the_config(tmp_path):
    sd = {"a": torch.ones(2, 3), "b": torch.zeros(4)}
    save_safetensors(tmp_path / "model.safetensors", sd, {"config": {"tasks": ["det"]}, "class_names": {"det": ["x"]}})
    got, info = load_weights(tmp_path / "model.safetensors")
    assert torch.equal(got["a"], sd["a"]) and info["config"] == {"tasks": ["det"]} and info["class_names"]["det"] == ["x"]


def test_rng_state_round_trip():
    state = rng_state()
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a


# ---------------------------------------------------------------- samplers

def test_resumable_sampler_matches_distributed_sampler_semantics():
    n, world = 10, 3
    shards = [ResumableSampler(n, seed=5, num_replicas=world, rank_=r) for r in range(world)]
    for s in shards:
        s.set_epoch(2)
    parts = [s.indices() for s in shards]
    assert all(len(p) == 4 for p in parts)  # padded to 12
    assert sorted(set(sum(parts, []))) == list(range(n))  # every sample seen
    ref = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=1, seed=5)
    ref.set_epoch(2)
    assert parts[1] == list(ref)  # same permutation and padding as torch's own sampler
    # another epoch, another order; the same epoch, the same order
    s = ResumableSampler(n, seed=5, num_replicas=1, rank_=0)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0
    s.set_epoch(0)
    assert list(s) == e0


def test_resumable_sampler_skips_what_was_consumed():
    s = ResumableSampler(13, seed=1, num_replicas=1, rank_=0)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, start=6)
    assert list(s) == full[6:] and len(s) == 7


def test_shard_sampler_partitions_without_duplicates():
    parts = [list(ShardSampler(10, 3, r)) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(10)) and [len(p) for p in parts] == [4, 3, 3]


# ---------------------------------------------------------------- logging and evaluation helpers

class _FakeTrainer:
    def __init__(self):
        self.step, self.max_steps, self.epoch, self.iter_in_epoch = 0, 4, 0, 0
        self.stop_reason, self.nonfinite_total, self.step_metrics = None, 0, {}

    @property
    def stopping(self):
        return self.stop_reason is not None


class _Tty(__import__("io").StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bar_on_a_terminal_plain_lines_otherwise(tmp_path, tty):
    import io
    import json

    from multitask_edet.engine.hooks import MetricsLogger

    stream = _Tty() if tty else io.StringIO()
    logger = MetricsLogger(tmp_path, every_steps=2, tensorboard=False, progress="auto", global_batch=8, stream=stream)
    logger.trainer = t = _FakeTrainer()
    logger.before_train()
    for k in range(4):
        t.step = k + 1
        t.step_metrics = {"loss": 1.0 / t.step, "loss/det": 0.5, "lr": 0.01, "step_time": 0.5}
        logger.after_step()
    logger.after_train()
    text = stream.getvalue()
    if tty:
        assert "4/4" in text and "loss=0.2500" in text and "img_s=16.0" in text  # tqdm bar with postfix
    else:
        lines = text.strip().splitlines()
        assert len(lines) == 2 and lines[-1].startswith("step 4/4") and "(det 0.5000)" in lines[-1]
        assert "16.0 img/s" in lines[-1] and "eta" in lines[-1]
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4] and recs[1]["loss"] == 0.25


def test_resumed_run_drops_metrics_logged_after_its_checkpoint(tmp_path):
    import json

    from multitask_edet.engine.hooks import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"type": "train", "step": s}) + "\n" for s in range(1, 6)) + '{"type": "tr')
    truncate_metrics(path, 3)  # a kill after step 5 (mid-line); the checkpoint was at step 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_eval_drops_samples_that_stand_in_for_skipped_ones():
    from multitask_edet.engine.evaluate import drop_replacements

    batch = {"images": torch.zeros(3, 3, 4, 4), "meta": [{"image_id": 1}, {"image_id": 2, "skipped": [{"file": "x"}]},
                                                           {"image_id": 3}], "mask": [None, None, torch.zeros(4, 4)]}
    out = drop_replacements(batch)
    assert out["images"].shape[0] == 2 and [m["image_id"] for m in out["meta"]] == [1, 3] and out["mask"][1] is not None
    assert drop_replacements({"images": torch.zeros(1, 3, 4, 4), "meta": [{"skipped": [{}]}]}) is None
