"""Broken data: `data check` lists every problem; training raises or skips and lists."""
from __future__ import annotations

import json

import pytest

from multitask_edet.cli import main
from multitask_edet.datasets.testing import truncate_file, write_coco_tree, write_voc_tree


@pytest.fixture()
def broken_voc(tmp_path):
    tree = write_voc_tree(tmp_path / "voc")
    bad_image = tree.voc_dir / "JPEGImages" / "2012_000002.jpg"
    truncate_file(bad_image, keep=0.3)
    # a box that leaves its 64x48 image by far
    xml = tree.voc_dir / "Annotations" / "2012_000003.xml"
    xml.write_text(xml.read_text().replace("<xmax>50</xmax>", "<xmax>500</xmax>"))
    return tree, bad_image, xml


def _train_args(root, out, *extra):
    return ["train", "--task", "det", "--dataset", "voc2012", "--data-root", str(root), "--model", "test-efficientdet",
            "--image-size", "128", "--batch-size", "2", "--epochs", "1", "--workers", "0", "--device", "cpu",
            "--output", str(out), "--set", "log.tensorboard=false", "--set", "train.ema=false",
            "--set", "model.backbone.pretrained=false", *extra]


def test_data_check_reports_each_problem_with_its_file(broken_voc, tmp_path, capsys):
    tree, bad_image, xml = broken_voc
    code = main(["data", "check", "--dataset", "voc2012", "--data-root", str(tree.root), "--task", "det",
                 "--json", str(tmp_path / "report.json")])
    printed = capsys.readouterr().out
    assert code == 1
    assert str(bad_image) in printed and str(xml) in printed
    assert "split train: 4 images, 2 ok, 2 with problems" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    problems = [p for s in report["splits"] for p in s["problems"]]
    assert len(problems) == 2 and any(p["file"] == str(bad_image) for p in problems)
    assert any(str(xml) in p["message"] for p in problems)


def test_training_raises_on_a_bad_sample_by_default(broken_voc, tmp_path, capsys):
    tree, bad_image, _ = broken_voc
    assert main(_train_args(tree.root, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "2012_00000" in err and ("corrupt" in err or "outside" in err)


def test_training_with_skip_completes_and_lists_the_skipped(broken_voc, tmp_path, capsys):
    tree, bad_image, xml = broken_voc
    out = tmp_path / "run"
    assert main(_train_args(tree.root, out, "--on-error", "skip")) == 0
    printed = capsys.readouterr().out
    assert "2 sample(s) skipped" in printed and str(bad_image) in printed and str(xml) in printed
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["step"] == 2  # both steps ran (4 images, 2 replaced by valid ones)
    skipped = json.loads((out / "skipped.json").read_text())
    assert len(skipped) == 2 and str(bad_image) in {s["file"] for s in skipped}
    assert any(str(xml) in s["reason"] for s in skipped)


def test_truncated_annotation_file_is_one_clear_error(tmp_path, capsys):
    tree = write_coco_tree(tmp_path / "coco", split="train")
    truncate_file(tree.ann_file, keep=0.5)
    code = main(_train_args(tmp_path / "coco", tmp_path / "run")[:4] + ["coco"] + _train_args(tmp_path / "coco", tmp_path / "run")[5:])
    err = capsys.readouterr().err
    assert code == 2 and str(tree.ann_file) in err and "Traceback" not in err
