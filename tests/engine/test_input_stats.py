"""A backbone's own input statistics end to end: a ``*_lite*`` backbone is fed mean/std 0.5.

timm's pretrained configuration of the Lite EfficientNets says mean = std = 0.5 (their TF
originals scale pixels to [-1, 1]); feeding them ImageNet statistics silently shifts every
input. The model config carries the backbone's statistics, and every place that turns pixels
into the network's input reads them there: the training loop, evaluation, ``mtedet predict``,
the shared weights' metadata, the raw export's JSON and the end-to-end graph itself.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from multitask_edet import hub
from multitask_edet.cli import main
from multitask_edet.engine import inference
from multitask_edet.engine.builders import load_for_inference

HALF = (0.5, 0.5, 0.5)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture
def normalisations(monkeypatch):
    """Every (mean, std) that turned a batch of pixels into the network's input, in order."""
    seen = []
    real = inference.normalize_images

    def spy(images, mean, std, *args, **kwargs):
        seen.append((tuple(mean), tuple(std)))
        return real(images, mean, std, *args, **kwargs)

    monkeypatch.setattr(inference, "normalize_images", spy)
    return seen


def test_lite_backbone_is_fed_half_mean_std_from_training_to_the_exported_graph(
        shapes_root, tmp_path, tiny_args, normalisations):
    onnx = pytest.importorskip("onnx")
    run = tmp_path / "run"
    assert main(tiny_args(shapes_root, run, "det,seg", "--set", "model.backbone.name=tf_efficientnet_lite0")) == 0
    # training and its evaluation: several batches, all with the backbone's statistics
    assert len(normalisations) >= 4 and set(normalisations) == {(HALF, HALF)}

    # the run's model and its shared weights carry them
    assert load_for_inference(run).model.config.mean == HALF
    info = hub.read_info(run)
    assert info["model_config"]["mean"] == list(HALF) and info["model_config"]["std"] == list(HALF)

    # mtedet predict normalises with them
    normalisations.clear()
    images = sorted((shapes_root / "VOC" / "JPEGImages").glob("val_*.jpg"))[:2]
    assert main(["predict", "--checkpoint", str(run), *map(str, images), "--out", str(tmp_path / "pred"),
                 "--device", "cpu", "--no-overlay"]) == 0
    assert normalisations and set(normalisations) == {(HALF, HALF)}

    # the raw export's description, and the end-to-end graph's own constants (pixel - 127.5) / 127.5
    assert main(["export", "--checkpoint", str(run), str(tmp_path / "raw.onnx"), "--no-check"]) == 0
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert raw["input"]["mean"] == list(HALF) and raw["input"]["std"] == list(HALF)
    assert main(["export", "--checkpoint", str(run), str(tmp_path / "e2e.onnx"), "--end-to-end", "--no-check"]) == 0
    e2e = json.loads((tmp_path / "e2e.json").read_text())
    assert e2e["inputs"]["images"]["mean"] == list(HALF)
    constants = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "e2e.onnx")).graph.initializer]
    per_channel = [c.ravel() for c in constants if c.shape == (1, 3, 1, 1)]
    assert per_channel and all(np.allclose(c, 127.5) for c in per_channel)


def test_imagenet_backbones_keep_imagenet_statistics(shapes_root, tmp_path, tiny_args, normalisations):
    """The control: the same run with the default EfficientNet gets ImageNet's statistics."""
    assert main(tiny_args(shapes_root, tmp_path / "run", "seg", "--set", "train.max_steps=1")) == 0
    assert normalisations and {(tuple(round(v, 3) for v in m), tuple(round(v, 3) for v in s))
                               for m, s in normalisations} == {IMAGENET}
