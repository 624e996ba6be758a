"""torchrun with 2 CPU processes (gloo): DDP training, distributed evaluation.

The distributed run evaluates its final weights with each process scoring a disjoint shard
(an uneven one here: 3 images over 2 processes); the metrics must equal a single-process
`mtedet eval` of the checkpoint it wrote.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from multitask_edet.cli import main


@pytest.mark.slow
def test_torchrun_two_processes_train_and_evaluate_like_one(shapes_root, tmp_path, tiny_args):
    out = tmp_path / "ddp"
    args = tiny_args(shapes_root, out, "det,seg", "--max-steps", "2", "--set", "eval.every_epochs=0",
                     "--set", "eval.max_images=3", "--set", "eval.batch_size=1")
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "multitask_edet", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "global batch 4" in proc.stdout  # 2 processes x batch 2; printed by rank 0 only once
    assert proc.stdout.count("training det+seg") == 1

    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["sampler"]["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["state"]["step"] == 2
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (ddp_eval,) = [r for r in recs if r["type"] == "eval"]

    # Same per-image computation as the torchrun processes (batch 1, one thread), so that the
    # comparison checks the sharding and merging, not float noise: an untrained detector's
    # near-equal scores make AP sensitive to the last bit of a logit.
    single = tmp_path / "single-eval"
    assert torch.get_num_threads() == 1  # tests/engine/conftest.py
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu", "--max-images", "3",
                 "--batch-size", "1", "--output", str(single)]) == 0
    metrics = json.loads((single / "metrics.json").read_text())["metrics"]
    compared = 0
    for task, values in metrics.items():
        for k, v in values.items():
            assert ddp_eval[f"{task}/{k}"] == pytest.approx(v, abs=1e-6), f"{task}/{k}"
            compared += 1
    assert compared > 10 and metrics["seg"]["pixel_acc"] > 0
