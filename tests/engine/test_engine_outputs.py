"""What a trained run gives users: `mtedet eval`, `predict` and `export`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from multitask_edet.cli import main


def test_eval_prints_tables_and_writes_json_and_pictures(trained_run, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", "--checkpoint", str(trained_run / "best.pt"), "--device", "cpu", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "IoU" in printed and "background" in printed and "AP50" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert report["dataset"] == "shapes" and report["split"] == "val"
    assert set(report["metrics"]) == {"det", "seg"} and 0 <= report["metrics"]["seg"]["mIoU"] <= 1
    # same weights (EMA of the final step) as the run's own final evaluation
    recs = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in recs if r["type"] == "eval"][-1]
    assert final["seg/mIoU"] == pytest.approx(report["metrics"]["seg"]["mIoU"], abs=1e-6)
    for pic in ("det_pr_curves.png", "seg_confusion_matrix.png"):
        with Image.open(out / pic) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_eval_on_a_dataset_with_other_classes_is_a_clear_error(trained_run, tmp_path, capsys):
    from multitask_edet.datasets.testing import write_voc_tree

    write_voc_tree(tmp_path / "voc")
    code = main(["eval", "--checkpoint", str(trained_run / "last.pt"), "--device", "cpu", "--dataset", "voc2012",
                 "--data-root", str(tmp_path / "voc"), "--output", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "classes" in err and "Traceback" not in err


def test_predict_writes_json_mask_and_overlay_in_original_coordinates(trained_run, shapes_root, tmp_path):
    images = sorted((shapes_root / "VOC" / "JPEGImages").glob("val_*.jpg"))[:3]
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(trained_run / "model.safetensors"), *map(str, images), "--out", str(out),
                 "--device", "cpu", "--batch-size", "2", "--score-threshold", "0.0"]) == 0
    for img in images:
        rec = json.loads((out / f"{img.stem}.json").read_text())
        with Image.open(img) as im:
            w, h = im.size
        assert (rec["width"], rec["height"]) == (w, h)
        assert rec["det"], "score threshold 0 keeps the detections of an untrained model"
        for d in rec["det"]:
            x0, y0, x1, y1 = d["box"]
            assert -1 <= x0 <= x1 <= w + 1 and -1 <= y0 <= y1 <= h + 1
            assert d["class"] in ("circle", "square", "triangle", "star", "cross") and 0 <= d["score"] <= 1
        assert rec["seg"]["mask"] == f"{img.stem}_seg_mask.png" and sum(rec["seg"]["classes"].values()) == pytest.approx(1)
        with Image.open(out / rec["seg"]["mask"]) as m:
            assert m.mode == "P" and m.size == (w, h)
            assert np.asarray(m).max() <= 5
        with Image.open(out / rec["overlay"]) as o:
            assert o.size == (w, h)
    # a folder works too; a missing path is one clear error line
    assert main(["predict", "--checkpoint", str(trained_run / "last.pt"), str(images[0].parent), "--out",
                 str(tmp_path / "all"), "--device", "cpu", "--no-overlay"]) == 0
    records = [p for p in (tmp_path / "all").glob("*.json") if p.name != "summary.json"]
    assert len(records) == len(list(images[0].parent.glob("*.jpg")))
    assert main(["predict", "--checkpoint", str(trained_run / "last.pt"), str(tmp_path / "nope.jpg"), "--out",
                 str(tmp_path / "n")]) == 2


def test_export_onnx_matches_pytorch(trained_run, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(trained_run / "last.pt"), "--format", "onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed
    desc = json.loads(out.with_suffix(".json").read_text())
    assert desc["max_abs_diff"] <= 1e-4
    names = list(desc["outputs"])
    assert names == [f"det_cls_p{l}" for l in range(3, 8)] + [f"det_box_p{l}" for l in range(3, 8)] + ["seg_logits"]
    assert desc["tasks"]["det"]["anchors_file"] == "model.det.anchors.npy"
    assert desc["tasks"]["seg"]["class_names"][0] == "background" and desc["input"]["mean"] == [0.485, 0.456, 0.406]
    anchors = np.load(out.parent / desc["tasks"]["det"]["anchors_file"])
    # every anchor pairs with one flattened row of the class/box outputs
    rows = sum(np.prod(desc["outputs"][f"det_box_p{l}"]["shape"][2:]) * 9 for l in range(3, 8))
    assert anchors.shape == (rows, 4)
    assert desc["outputs"]["seg_logits"]["shape"] == [1, 6, 128, 128]
    # independent check with onnxruntime on a fresh input
    import onnxruntime as ort
    import torch

    from multitask_edet.engine.builders import load_trained

    x = np.random.default_rng(1).standard_normal((1, 3, 128, 128)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    with torch.no_grad():
        ref = load_trained(trained_run / "last.pt").model(torch.from_numpy(x))
    assert np.abs(got[0] - ref["det"]["cls"][0].numpy()).max() <= 1e-4
    assert np.abs(got[-1] - ref["seg"].numpy()).max() <= 1e-4


def test_export_program_loads_back_equal_with_dynamic_batch(trained_run, tmp_path, capsys):
    import torch

    out = tmp_path / "model.pt2"
    assert main(["export", "--checkpoint", str(trained_run), "--format", "pt2", str(out)]) == 0
    assert "torch.export.load" in capsys.readouterr().out
    desc = json.loads(out.with_suffix(".json").read_text())
    assert desc["max_abs_diff"] <= 1e-5 and desc["input"]["shape"] == ["batch", 3, 128, 128]
    from multitask_edet.engine.builders import load_for_inference

    model = load_for_inference(trained_run).model
    program = torch.export.load(str(out)).module()  # needs nothing of multitask_edet
    for batch in (1, 4):
        x = torch.randn(batch, 3, 128, 128)
        with torch.no_grad():
            got, ref = program(x), model(x)
        assert torch.allclose(got["seg"], ref["seg"], atol=1e-5)
        assert all(torch.allclose(g, r, atol=1e-5) for g, r in zip(got["det"]["box"], ref["det"]["box"]))
    assert main(["export", "--checkpoint", str(trained_run), "--format", "pt2", "--end-to-end", str(out)]) == 2


@pytest.mark.slow
def test_export_program_with_a_dynamic_size(trained_run, tmp_path):
    import torch

    from multitask_edet.engine.export_program import export_program

    desc = export_program(trained_run, tmp_path / "dyn.pt2", dynamic_size=True)
    assert desc["input"]["shape"] == ["batch", 3, "height", "width"]
    program = torch.export.load(str(tmp_path / "dyn.pt2")).module()
    x = torch.randn(2, 3, 256, 384)
    assert program(x)["seg"].shape == (2, 6, 256, 384)
    with pytest.raises(Exception, match="256"):  # a one-pixel P7 (128 px) is outside what was captured
        program(torch.randn(1, 3, 128, 128))
