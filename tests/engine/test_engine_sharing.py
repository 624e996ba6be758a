"""A run folder is a pretrained folder (hub.py): one model-source resolver for predict/eval/export."""
from __future__ import annotations

import json

import pytest
import torch

import multitask_edet as mt
from multitask_edet.cli import main
from multitask_edet.engine.builders import load_for_inference, load_trained


def test_run_folder_holds_config_weights_and_a_card_with_the_final_metrics(trained_run):
    info = json.loads((trained_run / "config.json").read_text())
    recs = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in recs if r["type"] == "eval"][-1]
    assert info["step"] == final["step"] and info["experiment"]["data"]["dataset"] == "shapes"
    assert info["metrics"]["seg"]["mIoU"] == pytest.approx(final["seg/mIoU"])
    assert info["metrics"]["det"]["AP50"] == pytest.approx(final["det/AP50"])
    assert info["class_names"]["det"] == ["circle", "square", "triangle", "star", "cross"]
    card = (trained_run / "README.md").read_text()
    assert f"on shapes val at step {final['step']}" in card and f"| seg | mIoU | {final['seg/mIoU']:.4f} |" in card


def test_from_pretrained_of_a_run_folder_is_the_released_model(trained_run):
    model = mt.from_pretrained(trained_run)
    ref = load_trained(trained_run / "model.safetensors").model
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(model(x)["seg"], ref(x)["seg"])
    assert model.release_info["step"] == json.loads((trained_run / "config.json").read_text())["step"]


def test_every_source_resolves_to_the_same_model(trained_run, tmp_path):
    load_trained(trained_run / "model.safetensors").model.save_pretrained(tmp_path / "shared")
    x = torch.randn(1, 3, 128, 128)
    outs = []
    for source in (trained_run, trained_run / "model.safetensors", tmp_path / "shared"):
        trained = load_for_inference(source)
        assert trained.config is not None and trained.config.data.dataset == "shapes"  # the run's config travels
        with torch.no_grad():
            outs.append(trained.model(x)["det"]["box"][0])
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    # a shared copy keeps the run's metrics for its own card
    card = (tmp_path / "shared" / "README.md").read_text()
    assert "| seg | mIoU |" in card


def test_predict_takes_a_run_folder_or_a_pretrained_folder(trained_run, shapes_root, tmp_path):
    images = sorted((shapes_root / "VOC" / "JPEGImages").glob("val_*.jpg"))[:2]
    bare = mt.create_model("test-efficientdet-seg", class_names={"det": list("abcde"), "seg": ["bg", "x", "y"]})
    bare.save_pretrained(tmp_path / "bare")
    records = {}
    for name, source in (("run", trained_run), ("file", trained_run / "model.safetensors"), ("bare", tmp_path / "bare")):
        assert main(["predict", "--checkpoint", str(source), *map(str, images), "--out", str(tmp_path / name),
                     "--device", "cpu", "--no-overlay", "--score-threshold", "0"]) == 0
        records[name] = json.loads((tmp_path / name / f"{images[0].stem}.json").read_text())
    assert records["run"] == records["file"]
    assert {d["class"] for d in records["bare"]["det"]} <= set("abcde")


def test_eval_of_a_model_without_a_run_config_is_a_clear_error(tmp_path, capsys):
    mt.create_model("test-efficientdet").save_pretrained(tmp_path / "bare")
    assert main(["eval", "--checkpoint", str(tmp_path / "bare"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "without the config of a training run" in err and "Traceback" not in err


def test_an_unfinished_run_folder_resolves_to_its_checkpoint(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run / "last.pt", run / "last.pt")  # a run stopped before its release
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        got = load_for_inference(run).model(x)["seg"]
        ref = load_trained(trained_run / "last.pt").model(x)["seg"]
    assert torch.equal(got, ref)
    with pytest.raises(mt.errors.CheckpointError, match="holds no model.safetensors"):
        load_for_inference(tmp_path)
