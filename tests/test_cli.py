"""The `mtedet` command line: complete helps, one-line errors, the small commands."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch

from multitask_edet.cli import build_parser, main


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner, subsub in _subparsers(sub):
                    yield f"{name} {inner}", subsub


COMMANDS = ["train", "eval", "predict", "export", "push", "info", "convert-effdet", "convert-backbone", "data",
            "data check", "data sample", "demo"]


def test_every_command_is_listed_in_the_top_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for cmd in ["train", "eval", "predict", "export", "push", "info", "convert-effdet", "convert-backbone", "data", "demo"]:
        assert f"\n    {cmd}" in text, cmd
    assert sorted(name for name, _ in _subparsers(build_parser())) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_help_runs_and_documents_every_option(command, capsys):
    parser = dict(_subparsers(build_parser()))[command]
    with pytest.raises(SystemExit) as e:
        main([*command.split(), "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert parser.description and parser.description.split()[0] in text
    for action in parser._actions:
        for opt in action.option_strings:
            assert opt in text, f"{command}: {opt} missing from the help"
        if action.option_strings and action.help is not argparse.SUPPRESS:
            assert action.help, f"{command}: {action.option_strings} has no help text"


def test_train_help_lists_recipes_and_torchrun():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "det-coco-d0" in text and "seg-voc-d4" in text and "torchrun" in text


def test_module_entry_point_and_version():
    out = subprocess.run([sys.executable, "-m", "multitask_edet", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("mtedet ")


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "missing.pt"
    assert main(["eval", "--checkpoint", str(missing), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and str(missing) in err and "Traceback" not in err
    assert main(["train", "--task", "det", "--set", "train.no_such_key=1", "--print-config"]) == 2
    assert "valid keys under train" in capsys.readouterr().err
    assert main(["train", "--task", "det", "--data-root", str(tmp_path), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "--data-root" in err and "MTEDET_DATA" in err
    assert not (tmp_path / "r").exists()  # a failed start leaves no half-made run folder
    # --debug (or MTEDET_DEBUG=1) lets the traceback through
    from multitask_edet.errors import CheckpointError

    with pytest.raises(CheckpointError):
        main(["--debug", "eval", "--checkpoint", str(missing), "--device", "cpu"])
    monkeypatch.setenv("MTEDET_DEBUG", "1")
    with pytest.raises(CheckpointError):
        main(["eval", "--checkpoint", str(missing), "--device", "cpu"])


def test_argument_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--image-size", "12x"])
    assert e.value.code == 2 and "image size" in capsys.readouterr().err


def test_print_config_shows_the_resolved_recipe(capsys):
    assert main(["train", "--task", "seg", "--epochs", "7", "--image-size", "256x384", "--set", "train.ema=false",
                 "--print-config"]) == 0
    cfg = __import__("yaml").safe_load(capsys.readouterr().out)
    assert cfg["model"]["name"] == "efficientdet-d4-seg" and cfg["data"]["dataset"] == "voc2012"
    assert cfg["train"]["epochs"] == 7 and cfg["model"]["image_size"] == [256, 384] and cfg["train"]["ema"] is False


def test_info_json_and_table(capsys):
    assert main(["info", "test-efficientdet", "--tasks", "det,seg", "--num-classes", "4", "--image-size", "128",
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] > 0 and info["gmacs"] > 0 and info["image_size"] == [128, 128]
    assert info["num_classes"] == {"det": 4, "seg": 4}
    assert main(["info", "test-efficientdet"]) == 0
    text = capsys.readouterr().out
    assert "parameters" in text and "GMACs" in text and "backbone" in text


def test_data_sample_writes_both_layouts(tmp_path, capsys):
    assert main(["data", "sample", str(tmp_path / "s"), "--num-train", "2", "--num-val", "1", "--image-size", "48"]) == 0
    assert (tmp_path / "s" / "coco" / "annotations" / "instances_train.json").is_file()
    assert len(list((tmp_path / "s" / "VOC" / "JPEGImages").glob("*.jpg"))) == 3
    assert "--dataset shapes" in capsys.readouterr().out


def test_convert_effdet_writes_weights_our_model_loads(tmp_path, capsys):
    effdet = pytest.importorskip("effdet")
    from multitask_edet.models.factory import create_model

    net = effdet.create_model("tf_efficientdet_d0", pretrained=False, pretrained_backbone=False, num_classes=90)
    src = tmp_path / "effdet_d0.pth"
    torch.save(net.model.state_dict() if hasattr(net, "model") else net.state_dict(), src)
    dst = tmp_path / "d0.safetensors"
    assert main(["convert-effdet", str(src), str(dst), "--model", "tf_efficientdet-d0"]) == 0
    assert "wrote" in capsys.readouterr().out
    # loads strictly (missing/unexpected keys would raise) and replaces the random initialisation
    loaded = create_model("tf_efficientdet-d0", checkpoint=str(dst)).state_dict()
    fresh = create_model("tf_efficientdet-d0").state_dict()
    convs = [k for k, v in fresh.items() if v.dim() == 4]
    assert len(convs) > 100 and all(not torch.equal(fresh[k], loaded[k]) for k in convs)
    assert main(["convert-effdet", str(tmp_path / "nope.pth"), str(dst), "--model", "tf_efficientdet-d0"]) == 2
