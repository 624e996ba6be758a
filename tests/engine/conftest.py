"""Shared fixtures of the engine tests: a tiny shapes dataset and one trained joint run.

Everything runs the tiny ``test-efficientdet`` trunk at 128x128 on CPU with workers 0; the
trained run is made once per session and reused by the eval / predict / export tests.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from multitask_edet.cli import main


class _threads:
    """One intra-op thread: tiny-op training loops crawl with OpenMP spinning on a busy box."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


@pytest.fixture(autouse=True, scope="module")
def _engine_one_thread():
    with _threads():
        yield


def tiny_train_args(root: Path, out: Path, task: str = "det,seg", *extra: str) -> list[str]:
    """CLI arguments of a few-step CPU training on the tiny shapes data."""
    return [
        "train", "--task", task, "--dataset", "shapes", "--data-root", str(root), "--model", "test-efficientdet",
        "--image-size", "128", "--batch-size", "2", "--epochs", "1", "--workers", "0", "--device", "cpu",
        "--seed", "0", "--output", str(out),
        "--set", "log.tensorboard=false", "--set", "log.every_steps=1", "--set", "train.warmup_epochs=0.5",
        "--set", "train.base_lr=0.02", "--set", "train.base_batch=2",
        "--set", "model.backbone.pretrained=false",  # the default recipes start from ImageNet weights (Hub)
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_args():
    """``tiny_args(root, out, task, *extra)`` → the CLI arguments of a tiny training."""
    return tiny_train_args


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    from multitask_edet.datasets import write_shapes

    return write_shapes(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=4, image_size=64)


@pytest.fixture(scope="session")
def trained_run(shapes_root, tmp_path_factory) -> Path:
    """A det+seg run of one epoch (4 steps) with its final evaluation."""
    out = tmp_path_factory.mktemp("runs") / "joint"
    with _threads():
        assert main(tiny_train_args(shapes_root, out, "det,seg", "--set", "log.tensorboard=true")) == 0
    return out
