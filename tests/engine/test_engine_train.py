"""`mtedet train` on generated data in the real formats: the run folder, each task, non-finite steps."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from multitask_edet.cli import main
from multitask_edet.engine.checkpoint import load_weights


def _records(run, kind="train"):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_joint_run_writes_the_whole_run_folder(trained_run):
    run = trained_run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["tasks"] == ["det", "seg"] and cfg["model"]["name"] == "test-efficientdet"
    train = _records(run)
    assert [r["step"] for r in train] == [1, 2, 3, 4]  # 8 images / batch 2, every step logged
    assert all(r["loss/det"] > 0 and r["loss/seg"] > 0 and r["lr"] > 0 for r in train)
    (ev,) = _records(run, "eval")
    report = json.loads((run / "eval" / "step-00000004.json").read_text())
    main_metric = report["main_metric"]  # det/AP (COCO protocol) or det/AP50 (VOC protocol)
    assert main_metric in ("det/AP", "det/AP50") and report["best"] == pytest.approx(ev[main_metric])
    assert ev["step"] == 4 and 0 <= ev[main_metric] <= 1 and 0 <= ev["seg/mIoU"] <= 1
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "eval" / "seg_confusion_matrix.png").is_file()

    ckpt = torch.load(run / "last.pt", weights_only=True)
    for key in ("model", "ema", "optimizer", "scheduler", "state", "rng", "sampler", "config", "class_names"):
        assert key in ckpt, key
    assert ckpt["state"]["step"] == 4 and ckpt["state"]["epoch"] == 1 and ckpt["state"]["iter_in_epoch"] == 0
    assert ckpt["class_names"]["seg"][0] == "background" and len(ckpt["class_names"]["det"]) == 5
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["hooks"]["eval"]["best_step"] == 4
    # release weights are the EMA's, with the config in the metadata
    sd, info = load_weights(run / "model.safetensors")
    assert info["config"]["tasks"] == ["det", "seg"]
    assert all(torch.equal(sd[k], ckpt["ema"][k]) for k in sd)
    assert not all(torch.equal(sd[k], ckpt["model"][k]) for k in sd)


@pytest.mark.parametrize("task, metric, absent", [("det", "det/AP50", "loss/seg"), ("seg", "seg/mIoU", "loss/det")])
def test_single_task_runs(task, metric, absent, shapes_root, tmp_path, tiny_args):
    out = tmp_path / task
    assert main(tiny_args(shapes_root, out, task, "--max-steps", "2", "--set", "train.ema=false")) == 0
    train = _records(out)
    assert [r["step"] for r in train] == [1, 2] and all(absent not in r for r in train)
    assert metric in _records(out, "eval")[0]
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert "ema" not in ckpt and ckpt["state"]["step"] == 2 and ckpt["state"]["iter_in_epoch"] == 2


def test_existing_run_is_not_overwritten(trained_run, shapes_root, tiny_args, capsys):
    assert main(tiny_args(shapes_root, trained_run)) == 2
    assert "already holds a training" in capsys.readouterr().err


def test_nonfinite_losses_skip_steps_then_stop_with_a_checkpoint(shapes_root, tmp_path, tiny_args, monkeypatch, capsys):
    from multitask_edet.tasks.detection.task import DetectionTask

    real = DetectionTask.loss
    calls = {"n": 0}

    def flaky(self, outputs, batch, targets=None):
        calls["n"] += 1
        out = real(self, outputs, batch, targets)
        if calls["n"] == 2:  # one bad step: skipped, the run goes on
            out["det_cls"] = out["det_cls"] * float("nan")
        return out

    monkeypatch.setattr(DetectionTask, "loss", flaky)
    out = tmp_path / "flaky"
    assert main(tiny_args(shapes_root, out, "det", "--max-steps", "3", "--set", "eval.every_epochs=0")) == 0
    train = _records(out)
    assert "loss" not in train[1] and train[1]["nonfinite"] == 1 and "loss" in train[2]
    assert torch.load(out / "last.pt", weights_only=True)["state"]["nonfinite_total"] == 1

    def always_nan(self, outputs, batch, targets=None):
        return {k: v * float("nan") for k, v in real(self, outputs, batch, targets).items()}

    monkeypatch.setattr(DetectionTask, "loss", always_nan)
    out = tmp_path / "nan"
    assert main(tiny_args(shapes_root, out, "det", "--max-steps", "4", "--set", "train.max_nonfinite=2")) == 1
    err = capsys.readouterr().err
    assert "non-finite loss in 2 steps in a row" in err and "Traceback" not in err
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["state"]["step"] == 2 and ckpt["state"]["nonfinite_in_row"] == 2
    assert ckpt["optimizer"]["state"] == {}  # no update was ever applied
