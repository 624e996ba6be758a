"""The training benchmarks run offline, from scratch, on the current API, as their tables in benchmarks/RESULTS.md say.

They build their runs from the library's recipes, which start from ImageNet backbones fetched
from the Hugging Face Hub: a benchmark that does not say ``pretrained: false`` would stop at
the offline error (or, online, silently measure something else than its table describes).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
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
