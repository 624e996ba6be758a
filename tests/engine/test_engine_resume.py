"""Nothing lost: a run killed with SIGTERM mid-epoch resumes exactly.

The killed run is a real process (`python -m multitask_edet train`) that receives SIGTERM
while it trains; it must finish the step, write last.pt and exit with the "stopped, resumable"
code 75. `--resume` then continues it, and on CPU with a fixed seed and workers 0 its per-step
losses (and its final weights) equal those of an uninterrupted run to 1e-5.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from multitask_edet.cli import main

LOSS_KEYS = ("loss", "loss/det", "loss/seg", "loss/det/det_cls", "loss/det/det_box", "loss/seg/seg_ce")


def _losses(run):
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: r[k] for k in LOSS_KEYS if k in r} for r in recs if r["type"] == "train"}


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_equals_uninterrupted_run(shapes_root, tmp_path, tiny_args):
    extra = ("--epochs", "2", "--set", "eval.every_epochs=0", "--set", "eval.max_images=2")
    killed = tmp_path / "killed"
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "multitask_edet", *tiny_args(shapes_root, killed, "det,seg", *extra)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 240
    try:
        # signal once step 5 is logged: the process is then inside step 6 (epoch 2 of 4-step epochs)
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and any(json.loads(line)["step"] >= 5 for line in metrics.read_text().splitlines()
                                         if line.strip()):
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.02)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, out  # stopped, resumable (cli.EXIT_STOPPED), not "done"
    assert "stopped by signal" in out
    state = torch.load(killed / "last.pt", weights_only=True)["state"]
    assert 5 <= state["step"] < 8, state
    stopped_at = state["step"]

    assert main([*tiny_args(shapes_root, killed, "det,seg", *extra), "--resume"]) == 0
    whole = tmp_path / "whole"
    assert main(tiny_args(shapes_root, whole, "det,seg", *extra)) == 0

    resumed, reference = _losses(killed), _losses(whole)
    assert sorted(resumed) == sorted(reference) == list(range(1, 9))
    for step in range(1, 9):
        for k, v in reference[step].items():
            assert resumed[step][k] == pytest.approx(v, abs=1e-5), (step, k, stopped_at)
    a = torch.load(killed / "last.pt", weights_only=True)
    b = torch.load(whole / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        for k, v in b[part].items():
            assert torch.allclose(a[part][k].float(), v.float(), atol=1e-5), (part, k)
    # the mid-epoch case is the one this test exists for; an epoch-boundary stop is still checked above
    if stopped_at % 4 == 0:
        pytest.xfail(f"the signal landed on an epoch boundary (step {stopped_at}); mid-epoch not exercised this time")
