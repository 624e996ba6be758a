"""Evaluation on damaged validation data: `--on-error skip` skips, counts and lists; raise names the file.

Also: an empty split is an error, not "AP 0.00"; COCO entries a dataset drops when it reads
its annotation file under skip are listed with the run's skipped samples.
"""
from __future__ import annotations

import json

import pytest

from multitask_edet.cli import main
from multitask_edet.datasets.testing import truncate_file, write_coco_tree, write_voc_tree


def _train(root, dataset, out, *extra):
    return ["train", "--task", "det", "--dataset", dataset, "--data-root", str(root), "--model", "test-efficientdet",
            "--image-size", "128", "--batch-size", "2", "--max-steps", "2", "--workers", "0", "--device", "cpu",
            "--seed", "0", "--output", str(out), "--set", "log.tensorboard=false", "--set", "train.ema=false",
            "--set", "model.backbone.pretrained=false",  # the default recipes start from ImageNet weights (Hub)
            *extra]  # fmt: skip


def _eval(run, out, on_error):
    return ["eval", "--checkpoint", str(run / "last.pt"), "--device", "cpu", "--output", str(out),
            "--set", f"data.on_error={on_error}"]


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _one_error_line(err):
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    return err


def _images_scored(out_text):
    line = next(line for line in out_text.splitlines() if line.startswith("detection — "))
    return int(line.rsplit(",", 1)[1].split()[0])


def test_item11_bad_val_xml_is_skipped_in_training_evaluation_and_in_mtedet_eval(tmp_path, capsys):
    tree = write_voc_tree(tmp_path / "voc")
    xml = tree.voc_dir / "Annotations" / "2012_000004.xml"  # a val image
    xml.write_text(xml.read_text().replace("<xmin>5</xmin>", "<xmin>nan</xmin>"))
    image = tree.voc_dir / "JPEGImages" / "2012_000004.jpg"
    run = tmp_path / "run"

    assert main(_train(tree.root, "voc2012", run, "--on-error", "skip")) == 0
    printed = capsys.readouterr().out
    assert "evaluation at step 2" in printed and _images_scored(printed) == 1  # of 2 val images
    skipped = json.loads((run / "skipped.json").read_text())
    assert [(s["file"], s["split"]) for s in skipped] == [(str(image), "val")]
    assert "<xmin>nan</xmin>" in skipped[0]["reason"] and str(xml) in skipped[0]["reason"]
    assert "1 sample(s) skipped" in printed and str(xml) in printed

    assert main(_eval(run, tmp_path / "ev", "skip")) == 0
    printed = capsys.readouterr().out
    assert _images_scored(printed) == 1 and "1 sample(s) skipped in the evaluation of voc2012 val" in printed
    listed = json.loads((tmp_path / "ev" / "metrics.json").read_text())["skipped"]
    assert [s["file"] for s in listed] == [str(image)] and "<xmin>nan</xmin>" in listed[0]["reason"]

    assert main(_eval(run, tmp_path / "ev-raise", "raise")) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert str(xml) in err and "<xmin>nan</xmin>" in err


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    write_coco_tree(root, split="train")
    return root, write_coco_tree(root, split="val")


def test_item11_bad_val_image_and_json_entry_are_skipped_counted_and_listed(coco_root, tmp_path, capsys):
    root, val = coco_root
    truncate_file(val.img_dir / "b.jpg", 0.3)  # image id 2
    _edit_json(val.ann_file, lambda d: next(a for a in d["annotations"] if a["id"] == 70).update(bbox=[1, 2, "x", 4]))
    run = tmp_path / "run"

    assert main(_train(root, "coco", run, "--on-error", "skip")) == 0
    printed = capsys.readouterr().out
    assert _images_scored(printed) == 2  # a.jpg and c.jpg; b.jpg (image) and d.jpg (entry 70) left out
    skipped = {s["file"]: s for s in json.loads((run / "skipped.json").read_text())}
    assert set(skipped) == {str(val.img_dir / "b.jpg"), str(val.img_dir / "d.jpg")}
    assert "corrupt or truncated" in skipped[str(val.img_dir / "b.jpg")]["reason"]
    assert "annotation 70" in skipped[str(val.img_dir / "d.jpg")]["reason"]
    assert all(s["split"] == "val" for s in skipped.values())

    assert main(_eval(run, tmp_path / "ev", "skip")) == 0
    printed = capsys.readouterr().out
    assert _images_scored(printed) == 2 and "2 sample(s) skipped in the evaluation of coco val" in printed
    assert len(json.loads((tmp_path / "ev" / "metrics.json").read_text())["skipped"]) == 2

    assert main(_eval(run, tmp_path / "ev-raise", "raise")) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert str(val.ann_file) in err or str(val.img_dir / "b.jpg") in err


def test_coco_entries_dropped_when_reading_the_file_reach_skipped_json(coco_root, tmp_path, capsys):
    root, val = coco_root
    train_json = root / "annotations" / "instances_train2017.json"
    _edit_json(train_json, lambda d: next(a for a in d["annotations"] if a["id"] == 22).update(image_id=999))
    _edit_json(val.ann_file, lambda d: next(a for a in d["annotations"] if a["id"] == 11).update(image_id=[1]))
    run = tmp_path / "run"
    assert main(_train(root, "coco", run, "--on-error", "skip")) == 0
    skipped = json.loads((run / "skipped.json").read_text())
    reasons = [s["reason"] for s in skipped]
    assert any("annotation 22 has image_id 999" in r for r in reasons)
    assert any("annotation 11 has image_id [1]" in r for r in reasons)
    assert {s["file"] for s in skipped} == {str(train_json), str(val.ann_file)}
    assert "annotation 22 has image_id 999" in capsys.readouterr().out


def test_item16_an_empty_split_is_an_error_not_a_score(coco_root, tmp_path, capsys):
    root, val = coco_root
    run = tmp_path / "run"
    assert main(_train(root, "coco", run)) == 0
    capsys.readouterr()
    _edit_json(val.ann_file, lambda d: d.update(images=[], annotations=[]))

    assert main(_eval(run, tmp_path / "ev", "raise")) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "'val' split of coco" in err and "has no images" in err
    assert not (tmp_path / "ev" / "metrics.json").exists()

    fresh = tmp_path / "fresh"
    assert main(_train(root, "coco", fresh)) == 2  # refused before training, not after it
    assert "has no images" in _one_error_line(capsys.readouterr().err)
    assert not fresh.exists()
