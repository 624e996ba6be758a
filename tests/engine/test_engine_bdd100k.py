"""Acceptance: det + two differently named seg heads (drivable, lane) trained from the CLI on the generated
BDD100K-layout sample with the shipped bdd100k-d3 recipe shrunk by flags, every task evaluated and reported."""
from __future__ import annotations

import json
import math

import pytest

from multitask_edet.cli import main
from multitask_edet.datasets.bdd100k import BDD100K_DET_CLASSES
from multitask_edet.engine.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def bdd_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bdd")
    assert main(["data", "sample", str(root), "--format", "bdd100k", "--num-train", "8", "--num-val", "4",
                 "--image-size", "128"]) == 0
    return root


def test_joint_det_drivable_lane_run_from_the_cli(bdd_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--config", "bdd100k-d3", "--data-root", str(bdd_root), "--model", "test-efficientdet",
            "--image-size", "128", "--batch-size", "2", "--max-steps", "4", "--workers", "0", "--device", "cpu",
            "--seed", "0", "--output", str(out), "--set", "log.tensorboard=false", "--set", "log.every_steps=1",
            "--set", "data.options.lane_dilation=1", "--set", "model.backbone.pretrained=false"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "training det+drivable+lane on bdd100k: 8 images" in text
    # one report per task: COCO AP + the HybridNets figures; an IoU table per seg head with its paper figures
    assert "detection — COCO protocol, 4 images" in text
    assert "hybridnets protocol (YOLOv5-style matching, 101-point AP; not COCO's): recall" in text
    assert "\ndrivable " in text and "IoU drivable" in text and "\nlane " in text and "IoU lane" in text
    assert text.count("hybridnets protocol (per image, original resolution") == 2

    reports = sorted((out / "eval").glob("step-*.json"))
    metrics = json.loads(reports[-1].read_text())["metrics"]
    assert set(metrics) == {"det", "drivable", "lane"}
    expected = {"det": ["AP", "AP50", "hybridnets/recall", "hybridnets/mAP50"],
                "drivable": ["mIoU", "pixel_acc", "IoU/drivable", "hybridnets/mIoU", "hybridnets/IoU_drivable",
                             "hybridnets/acc_drivable"],
                "lane": ["mIoU", "IoU/lane", "hybridnets/IoU_lane", "hybridnets/acc_lane", "hybridnets/pixel_acc"]}
    for task, keys in expected.items():
        for k in keys:
            v = metrics[task][k]
            assert math.isfinite(v) and 0.0 <= v <= 1.0, (task, k, v)

    # each head learnt from its own annotation with its own loss terms (the seg heads: focal + Tversky)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {k for s in steps if s["type"] == "train" for k in s if k.startswith("loss/")}
    assert {"loss/det/det_cls", "loss/det/det_box", "loss/drivable/drivable_focal", "loss/drivable/drivable_tversky",
            "loss/lane/lane_focal", "loss/lane/lane_tversky"} <= losses
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["class_names"] == {"det": list(BDD100K_DET_CLASSES), "drivable": ["background", "drivable"],
                                   "lane": ["background", "lane"]}

    # `mtedet eval` of the checkpoint scores the same three tasks the same way
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--device", "cpu", "--output", str(tmp_path / "ev")]) == 0
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]
    assert evaluated.keys() == metrics.keys()
    for task in metrics:
        assert evaluated[task] == pytest.approx(metrics[task], abs=1e-9), task
