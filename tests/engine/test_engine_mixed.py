"""Mixed datasets from the CLI: detection batches from one dataset, segmentation from another,
each task evaluated on its own data; a mid-epoch stop resumes exactly with the mixed sampler."""
from __future__ import annotations

import json

import pytest
import torch

from multitask_edet.cli import main


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    from multitask_edet.datasets import write_shapes
    from multitask_edet.datasets.testing import write_voc_tree

    root = tmp_path_factory.mktemp("mixed")
    write_shapes(root / "shapes", num_train=6, num_val=2, image_size=64)
    write_voc_tree(root)  # root/VOCdevkit/VOC2012: 3 seg train, 2 seg val images
    return root


def _records(run, kind="train"):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def _args(tiny_args, root, out, *extra):
    args = tiny_args(root, out, "det,seg", "--set", "train.ema=false", *extra)
    args[args.index("--dataset") + 1] = "shapes+voc2012"
    return args


def test_mixed_datasets_train_each_task_on_its_own_batches(mixed_root, tmp_path, tiny_args):
    out = tmp_path / "mixed"
    assert main(_args(tiny_args, mixed_root, out, "--max-steps", "4")) == 0
    train = _records(out)
    det_only = [r for r in train if "loss/det" in r and "loss/seg" not in r]
    seg_only = [r for r in train if "loss/seg" in r and "loss/det" not in r]
    assert det_only and seg_only and len(det_only) + len(seg_only) == 4
    (ev,) = _records(out, "eval")
    assert "seg/IoU/aeroplane" in ev and any(k.startswith("det/") for k in ev)  # VOC classes for seg, shapes for det
    names = torch.load(out / "last.pt", weights_only=True)["class_names"]
    assert len(names["det"]) == 5 and len(names["seg"]) == 21


def test_mixed_run_stopped_mid_epoch_resumes_exactly(mixed_root, tmp_path, tiny_args, monkeypatch):
    from multitask_edet.engine import hooks

    extra = ("--epochs", "2", "--set", "eval.every_epochs=0", "--set", "eval.max_images=1")
    whole = tmp_path / "whole"
    assert main(_args(tiny_args, mixed_root, whole, *extra)) == 0

    real = hooks.MetricsLogger.after_step

    def stop_at_2(self):
        real(self)
        if self.trainer.step == 2:
            self.trainer.request_stop()  # what SIGTERM does; honoured at the next step

    monkeypatch.setattr(hooks.MetricsLogger, "after_step", stop_at_2)
    part = tmp_path / "part"
    assert main(_args(tiny_args, mixed_root, part, *extra)) == 75  # stopped, resumable
    state = torch.load(part / "last.pt", weights_only=True)["state"]
    assert state["step"] == 3 and state["iter_in_epoch"] == 3  # 3 + 1 batches per epoch: mid-epoch
    monkeypatch.setattr(hooks.MetricsLogger, "after_step", real)
    assert main([*_args(tiny_args, mixed_root, part, *extra), "--resume"]) == 0

    a, b = _records(part), _records(whole)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b):
        assert ra.keys() & {"loss/det", "loss/seg"} == rb.keys() & {"loss/det", "loss/seg"}
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5), ra["step"]
