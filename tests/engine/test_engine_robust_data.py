"""Training and evaluation on damaged annotation files: stop with file and field, or skip and list."""
from __future__ import annotations

import json

import pytest

from multitask_edet.cli import main
from multitask_edet.datasets.testing import write_coco_tree, write_voc_tree


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _ann(data, ann_id):
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def _args(command_root, dataset, out, *extra):
    return ["train", "--task", "det", "--dataset", dataset, "--data-root", str(command_root), "--model",
            "test-efficientdet", "--image-size", "128", "--batch-size", "2", "--max-steps", "2", "--workers", "0",
            "--device", "cpu", "--output", str(out), "--set", "log.tensorboard=false", "--set", "train.ema=false",
            "--set", "model.backbone.pretrained=false",  # the default recipes start from ImageNet weights (Hub)
            *extra]  # fmt: skip


def _error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    return err


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    train = write_coco_tree(root, split="train")
    val = write_coco_tree(root, split="val")
    return root, train.ann_file, val.ann_file


def test_nan_coco_box_stops_training_with_file_and_field(coco_root, tmp_path, capsys):
    root, train_json, _ = coco_root
    _edit_json(train_json, lambda d: _ann(d, 10).update(bbox=[float("nan"), 8.0, 32.0, 32.0]))
    assert main(_args(root, "coco", tmp_path / "run")) == 2
    err = _error_line(capsys)
    assert str(train_json) in err and "annotation 10" in err and "bbox [nan" in err


def test_on_error_skip_trains_and_evaluates_past_bad_coco_entries(coco_root, tmp_path, capsys):
    root, train_json, val_json = coco_root

    def damage_train(d):
        _ann(d, 10)["bbox"] = [float("nan"), 8.0, 32.0, 32.0]
        next(im for im in d["images"] if im["id"] == 2)["width"] = "abc"
        _ann(d, 22)["image_id"] = 999

    _edit_json(train_json, damage_train)
    _edit_json(val_json, lambda d: _ann(d, 70).update(category_id=[7]))
    out = tmp_path / "run"
    assert main(_args(root, "coco", out, "--on-error", "skip")) == 0
    printed = capsys.readouterr().out
    skipped = {s["file"]: s["reason"] for s in json.loads((out / "skipped.json").read_text())}
    assert "bbox [nan" in skipped[str(root / "train2017" / "a.jpg")]
    assert "width 'abc'" in skipped[str(root / "train2017" / "b.jpg")]
    assert "sample(s) skipped" in printed and "evaluation at step 2" in printed

    # the val split's bad entry: evaluation stops naming it, or skips it when asked
    argv = ["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu", "--output", str(tmp_path / "ev")]
    assert main([*argv, "--set", "data.on_error=raise"]) == 2
    err = _error_line(capsys)
    assert str(val_json) in err and "category_id [7]" in err
    assert main([*argv, "--set", "data.on_error=skip"]) == 0
    assert "AP50" in capsys.readouterr().out


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_nan_voc_coordinate_stops_or_is_skipped(on_error, tmp_path, capsys):
    tree = write_voc_tree(tmp_path / "voc")
    xml = tree.voc_dir / "Annotations" / "2012_000003.xml"
    xml.write_text(xml.read_text().replace("<xmin>11</xmin>", "<xmin>nan</xmin>"))
    code = main(_args(tree.root, "voc2012", tmp_path / "run", "--on-error", on_error))
    if on_error == "raise":
        assert code == 2
        err = _error_line(capsys)
        assert str(xml) in err and "<xmin>nan</xmin>" in err
    else:
        assert code == 0
        skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
        assert [s["file"] for s in skipped] == [str(tree.voc_dir / "JPEGImages" / "2012_000003.jpg")]
        assert "<xmin>nan</xmin>" in skipped[0]["reason"]
