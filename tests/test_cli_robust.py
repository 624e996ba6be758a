"""Bad arguments and numbers on the command line: one line, the right exit code, never a traceback."""
from __future__ import annotations

import pytest

from multitask_edet.cli import main


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_scientific_notation_is_a_number_in_set_and_yaml(tmp_path, capsys):
    import yaml

    assert main(["train", "--task", "det", "--set", "train.lr=1e-3", "--set", "train.base_lr=1E-2",
                 "--set", "train.max_steps=1e3", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)["train"]
    assert cfg["lr"] == 0.001 and cfg["base_lr"] == 0.01 and cfg["max_steps"] == 1000
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tasks: [det]\ntrain:\n  lr: 1e-3\n  warmup_epochs: .5\n  weight_decay: 4E-5\n")
    assert main(["train", "--config", str(recipe), "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)["train"]
    assert cfg["lr"] == 0.001 and cfg["warmup_epochs"] == 0.5 and cfg["weight_decay"] == 4e-5


@pytest.mark.parametrize("item, needle", [
    ("train.lr=nan", "train.lr"), ("train.base_lr=inf", "train.base_lr"), ("train.lr=-.inf", "train.lr"),
    ("train.clip_grad_norm=nan", "train.clip_grad_norm"), ("eval.every_steps=-1", "eval.every_steps"),
    ("eval.every_epochs=-2", "eval.every_epochs"), ("train.checkpoint_every_steps=-5", "train.checkpoint_every_steps"),
    ("train.max_steps=2.5", "train.max_steps"), ("train.lr=abc", "train.lr"),
])  # fmt: skip
def test_nonfinite_rates_and_negative_intervals_fail_validation(item, needle, capsys):
    assert main(["train", "--task", "det", "--set", item, "--print-config"]) == 2
    _one_line_error(capsys, needle)


def test_nonfinite_lr_fails_validate_for_configs_built_in_python():
    import dataclasses

    from multitask_edet.engine.config import build_config, validate
    from multitask_edet.errors import ConfigError

    cfg = build_config(None, tasks=["det"])
    for change in ({"lr": float("nan")}, {"base_lr": float("inf")}, {"checkpoint_every_steps": -1}):
        with pytest.raises(ConfigError, match=next(iter(change))):
            validate(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **change)))


def test_unknown_device_is_a_one_line_error(capsys):
    assert main(["eval", "--checkpoint", "x.pt", "--device", "banana"]) == 2
    _one_line_error(capsys, "banana", "cpu")


@pytest.mark.parametrize("argv, needle", [
    (["predict", "--checkpoint", "x.pt", "img.jpg", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["data", "check", "--dataset", "shapes", "--workers", "-1"], "--workers"),
    (["eval", "--checkpoint", "x.pt", "--batch-size", "-3"], "--batch-size"),
    (["train", "--task", "det", "--workers", "-1"], "--workers"),
])  # fmt: skip
def test_invalid_counts_are_refused_before_any_work(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_exit_codes_are_documented_in_the_top_help(capsys):
    from multitask_edet.cli import EXIT_CODES, EXIT_STOPPED

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "exit codes:" in text
    for code, meaning in EXIT_CODES.items():
        assert f"  {code:<4} {meaning}" in text
    assert EXIT_STOPPED not in (0, 1, 2) and "resum" in EXIT_CODES[EXIT_STOPPED]


def test_readme_lists_the_same_exit_codes_as_the_cli():
    from pathlib import Path

    from multitask_edet.cli import EXIT_CODES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {int(cells[1]): cells[2] for line in readme.splitlines()
            if (cells := [c.strip() for c in line.split("|")]) and len(cells) == 4 and cells[1].isdigit()}
    assert rows == EXIT_CODES
