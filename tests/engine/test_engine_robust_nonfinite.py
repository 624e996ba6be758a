"""Numbers that must not lie: non-finite outputs are never scored, non-finite weights never saved."""
from __future__ import annotations

import json
import math

import pytest
import torch

from multitask_edet.cli import main


def _nan_copy(src, dst):
    ckpt = torch.load(src, weights_only=True)
    for part in ("model", "ema"):
        for k, v in ckpt.get(part, {}).items():
            if v.is_floating_point():
                v.fill_(float("nan"))
    torch.save(ckpt, dst)
    return dst


def test_nan_weights_do_not_score(trained_run, tmp_path, capsys):
    ckpt = _nan_copy(trained_run / "best.pt", tmp_path / "nan.pt")
    out = tmp_path / "ev"
    code = main(["eval", "--checkpoint", str(ckpt), "--device", "cpu", "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 1, captured
    assert "outputs were all non-finite" in captured.err and "no AP is reported" in captured.err
    assert "Traceback" not in captured.err
    assert "AP50" not in captured.out and "mIoU" not in captured.out  # no table, no number
    assert not (out / "metrics.json").exists()


def test_nan_weights_give_no_segmentation_score(shapes_root, tmp_path, tiny_args, capsys):
    run = tmp_path / "seg"
    assert main(tiny_args(shapes_root, run, "seg", "--max-steps", "1", "--set", "eval.max_images=1")) == 0
    ckpt = _nan_copy(run / "last.pt", tmp_path / "nan.pt")
    capsys.readouterr()
    code = main(["eval", "--checkpoint", str(ckpt), "--device", "cpu", "--output", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert code == 1 and "segmentation outputs were all non-finite" in err and "no mIoU" in err


def test_predict_with_nan_weights_writes_no_made_up_detections(trained_run, shapes_root, tmp_path):
    ckpt = _nan_copy(trained_run / "best.pt", tmp_path / "nan.pt")
    image = sorted((shapes_root / "VOC" / "JPEGImages").glob("val_*.jpg"))[0]
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(ckpt), str(image), "--out", str(out), "--device", "cpu",
                 "--score-threshold", "0"]) == 0
    rec = json.loads((out / f"{image.stem}.json").read_text())
    assert rec["det"] == [] and rec["seg"]["classes"] == {}


def test_postprocessing_drops_and_counts_nonfinite_outputs():
    from multitask_edet.tasks.detection import AnchorGenerator, DetPostprocessConfig
    from multitask_edet.tasks.detection.postprocess import postprocess_detections

    size, c = (128, 128), 3
    g = torch.Generator().manual_seed(0)
    cls = [torch.randn(2, 9 * c, size[0] >> l, size[1] >> l, generator=g) for l in range(3, 6)]
    box = [torch.randn(2, 36, size[0] >> l, size[1] >> l, generator=g) * 0.3 for l in range(3, 6)]
    cls[0][0, :, :2, :] = float("nan")  # image 0: NaN logits of 9 anchors x 3 classes at 2 x 16 cells
    box[1][0, 4:8, 0, 0] = float("inf")  # image 0: anchor 1 of the first P4 cell: inf box codes
    box[2][0, 8:12, 0, 0] = 200.0  # image 0: a finite code that decodes to an infinite box (exp overflow) ...
    cls[2][0, 2 * c : 3 * c, 0, 0] = 10.0  # ... of an anchor whose 3 class scores make the top-k
    anchors = AnchorGenerator(levels=(3, 4, 5))(size)
    for nms in ("nms", "soft_nms"):
        dets = postprocess_detections(cls, box, anchors, c, size, cfg=DetPostprocessConfig(nms=nms))
        assert dets[0]["nonfinite"] == 9 * c * 2 * 16 + c + c and dets[1]["nonfinite"] == 0
        for d in dets:
            assert torch.isfinite(d["boxes"]).all() and torch.isfinite(d["scores"]).all() and len(d["scores"]) == 100


def test_detection_evaluator_never_passes_nan_to_pycocotools(tmp_path):
    from multitask_edet.datasets import build_dataset
    from multitask_edet.datasets.testing import write_coco_tree
    from multitask_edet.errors import NonFiniteError
    from multitask_edet.tasks.detection.evaluator import DetectionEvaluator

    tree = write_coco_tree(tmp_path / "coco")
    ds = build_dataset("coco", tree.root, "val", "det")
    ev = DetectionEvaluator.from_dataset(ds)
    truth = torch.tensor([[8.0, 8, 40, 40], [float("nan"), 8, 40, 40]])
    ev.add(1, truth, torch.tensor([0.9, 0.95]), torch.tensor([0, 0]), nonfinite=5)
    records = ev.coco_results()
    assert len(records) == 1 and all(math.isfinite(v) for v in records[0]["bbox"])
    assert ev.compute()["AP50"] > 0 and "6 non-finite candidate boxes/scores left out" in ev.report()
    ev.reset()
    for image_id in (1, 2):
        ev.add(image_id, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), nonfinite=100)
    with pytest.raises(NonFiniteError, match="all non-finite"):
        ev.compute()


def test_segmentation_pixels_without_finite_scores_are_misses_not_class_0():
    from multitask_edet.errors import NonFiniteError
    from multitask_edet.tasks.segmentation import scores_to_masks
    from multitask_edet.tasks.segmentation.evaluator import SegmentationEvaluator

    scores = torch.zeros(1, 3, 4, 4)
    scores[0, 1] = 1.0  # class 1 everywhere ...
    scores[0, :, 0, :] = float("nan")  # ... except a NaN first row
    (mask,) = scores_to_masks(scores)
    assert (mask[0] == 255).all() and (mask[1:] == 1).all()
    gt = torch.ones(4, 4, dtype=torch.long)
    ev = SegmentationEvaluator(3)
    ev.accumulate(mask, gt)
    m = ev.compute()
    assert m["IoU/class_1"] == pytest.approx(12 / 16) and m["pixel_acc"] == pytest.approx(12 / 16)
    assert "4 of 16 pixels had non-finite scores" in ev.report()
    ev.reset()
    ev.accumulate(torch.full((4, 4), 255, dtype=torch.uint8), gt)
    with pytest.raises(NonFiniteError, match="no mIoU"):
        ev.compute()


# ---------------------------------------------------------------------------- diverging training

def _finite(tensors) -> bool:
    return all(torch.isfinite(v).all() for v in tensors if v.is_floating_point())


@pytest.mark.parametrize("settings, kind", [
    (("train.base_lr=1000000", "train.clip_grad_norm=null"), "non-finite"),
    (("train.lr=1.0e+38", "train.warmup_epochs=0", "train.clip_grad_norm=null"), "non-finite weights after the update"),
])  # fmt: skip
def test_diverging_run_never_writes_nonfinite_weights(settings, kind, shapes_root, tmp_path, tiny_args, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "diverged"
    sets = [a for s in settings for a in ("--set", s)]
    code = main(tiny_args(shapes_root, out, "det,seg", "--epochs", "3", "--set", "train.max_nonfinite=3",
                          "--set", "eval.every_steps=1", "--set", "eval.max_images=2", *sets))
    err = capsys.readouterr().err
    last = torch.load(out / "last.pt", weights_only=True)
    assert _finite(last["model"].values()) and _finite(last["ema"].values())
    assert _finite(load_file(out / "model.safetensors").values())
    if (out / "best.pt").exists():
        best = torch.load(out / "best.pt", weights_only=True)
        assert _finite(best["model"].values()) and _finite(best["ema"].values())
    assert code == 1 and kind in err and "every failing step was undone" in err, err
    good = last["state"]["last_finite_step"]  # the message says which step the weights on disk are from
    assert (f"holds the weights of step {good}," in err) if good else ("holds the initial weights" in err)
    assert last["state"]["nonfinite_in_row"] == 3


def test_checkpoints_are_never_written_from_nonfinite_weights(trained_run, tmp_path):
    import shutil

    from multitask_edet.engine.checkpointer import Checkpointer
    from multitask_edet.errors import NonFiniteError

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = (run / "last.pt").read_bytes()

    class _Trainer:  # the parts of a trainer a Checkpointer reads
        def __init__(self):
            self.model = torch.nn.Linear(2, 2)
            self.model.weight.data[0, 0] = float("nan")
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
            self.weighting = torch.nn.Module()
            self.loader = type("L", (), {"seed": 0})()
            self.scaler, self.step, self.epoch, self.iter_in_epoch = None, 7, 0, 7

        def progress_state(self):
            return {"step": self.step}

    ckpt = Checkpointer(run, trainer=_Trainer())
    with pytest.raises(NonFiniteError, match="not writing .*last.pt: 1 weight tensor.*model.weight"):
        ckpt.save("last.pt")
    with pytest.raises(NonFiniteError, match="model.safetensors"):
        ckpt.save_release()
    assert (run / "last.pt").read_bytes() == before


def test_failure_in_the_first_step_leaves_nothing_that_blocks_a_rerun(shapes_root, tmp_path, tiny_args, monkeypatch):
    from multitask_edet.tasks.detection.task import DetectionTask

    def broken(self, outputs, batch, targets=None):
        raise RuntimeError("shape mismatch in the first forward")

    out = tmp_path / "run"
    argv = tiny_args(shapes_root, out, "det", "--max-steps", "2", "--set", "train.ema=false")
    monkeypatch.setattr(DetectionTask, "loss", broken)
    with pytest.raises(RuntimeError, match="first forward"):
        main(argv)
    assert not (out / "last.pt").exists() and not (out / "model.safetensors").exists()
    monkeypatch.undo()
    assert main(argv) == 0  # the same command again: not refused as "already holds a training"


class _NanGradient(torch.autograd.Function):
    """The identity forward; NaN gradients backward: a finite loss whose step is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _nan_gradients(monkeypatch):
    from multitask_edet.tasks.detection.task import DetectionTask

    real = DetectionTask.loss
    monkeypatch.setattr(DetectionTask, "loss",
                        lambda self, *a, **k: {n: _NanGradient.apply(v) for n, v in real(self, *a, **k).items()})


def _inf_batchnorm_statistics(monkeypatch):
    real = torch.nn.BatchNorm2d.forward

    def forward(self, x):
        out = real(self, x)  # normalised with the batch's own statistics: the loss stays finite
        if self.training:
            self.running_var.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.nn.BatchNorm2d, "forward", forward)


@pytest.mark.parametrize("inject, kind", [(_nan_gradients, "gradients"),
                                          (_inf_batchnorm_statistics, "BatchNorm statistics")])
def test_a_finite_loss_with_nonfinite_gradients_or_statistics_is_undone(inject, kind, shapes_root, tmp_path, tiny_args,
                                                                        monkeypatch, capsys):
    out = tmp_path / "run"
    inject(monkeypatch)
    code = main(tiny_args(shapes_root, out, "det", "--max-steps", "8", "--set", "train.max_nonfinite=3",
                          "--set", "train.ema=false", "--set", "eval.every_epochs=0"))
    err = capsys.readouterr().err
    assert code == 1 and f"non-finite {kind} in 3 steps in a row" in err and "holds the initial weights" in err, err
    last = torch.load(out / "last.pt", weights_only=True)
    assert _finite(last["model"].values())  # parameters and BatchNorm buffers: those of before the undone steps
    assert last["state"]["nonfinite_total"] == 3 and last["state"]["last_finite_step"] == 0
