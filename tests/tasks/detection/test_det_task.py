"""DetectionTask wiring: registry, head, presence of targets, errors."""
import pytest
import torch

from multitask_edet.errors import DatasetError
from multitask_edet.tasks.base import TASKS
from multitask_edet.tasks.detection import DetectionConfig, DetectionTask


def test_registered_as_det():
    assert TASKS.get("det") is DetectionTask
    assert DetectionTask.type_name == "det" and DetectionTask().name == "det" and DetectionTask.annotation == "boxes"
    assert DetectionTask(name="vehicles").source == "vehicles"
    assert DetectionTask({"source": "det"}, name="vehicles").source == "det"


def test_head_outputs_fit_the_anchors():
    task = DetectionTask(DetectionConfig(num_classes=3, repeats=1))
    head = task.build_head(16)
    assert head.levels == (3, 4, 5, 6, 7)
    size = (128, 256)
    feats = [torch.randn(2, 16, size[0] >> l, size[1] >> l) for l in head.levels]
    out = head(feats)
    n = sum(o.shape[1] // 3 * o.shape[2] * o.shape[3] for o in out["cls"])
    assert n == task.anchors(size).shape[0]
    assert all(b.shape[1] == 36 for b in out["box"])
    batch = {"images": torch.zeros(2, 3, *size, dtype=torch.uint8),
             "det": [{"boxes": torch.tensor([[10.0, 10, 60, 50]]), "labels": torch.tensor([2])}, None]}
    assert task.has_targets(batch).tolist() == [True, False]
    losses = task.loss(out, batch)
    assert set(losses) == {"det_cls", "det_box"} and all(torch.isfinite(v) for v in losses.values())
    preds = task.postprocess(out, {"images": batch["images"]})  # no meta: input pixels, clipped to it
    assert len(preds) == 2 and (preds[0]["boxes"][:, 2] <= 256).all() and (preds[0]["boxes"][:, 3] <= 128).all()


def test_evaluator_needs_detection_ground_truth():
    with pytest.raises(DatasetError, match="no 'det' box annotation"):
        DetectionTask().evaluator(object())
