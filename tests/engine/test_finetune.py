"""Fine-tuning settings: a part held still for its first steps, frozen BatchNorm in the backbone."""
from __future__ import annotations

import pytest
import torch

from multitask_edet.engine.builders import build_model, seed_everything
from multitask_edet.engine.run import run_training
from multitask_edet.engine.checkpoint import load_checkpoint
from multitask_edet.engine.config import build_config
from multitask_edet.engine.finetune import FreezeStepsHook, freeze_batch_norm
from multitask_edet.engine.param_groups import build_param_groups
from multitask_edet.errors import ConfigError


def _cfg(shapes_root, out, steps, **train):
    return build_config("smoke-shapes", tasks=["seg"], overrides={
        "output": str(out), "model": {"image_size": [64, 64], "neck": {"max_level": 5}},
        "data": {"root": str(shapes_root)},
        "train": {"max_steps": steps, "batch_size": 2, "ema": False, "optimizer": "adamw", "lr": 0.01, **train},
        "eval": {"every_epochs": 0, "max_images": 1}, "log": {"tensorboard": False, "progress": "none"},
    })


def _init_and_final(cfg):
    seed_everything(cfg.train.seed)
    init = build_model(cfg, {"seg": ["a", "b", "c", "d", "e", "f"]}).state_dict()  # the run's own init (same seed)
    run_training(cfg)
    return init, load_checkpoint(cfg.run_dir() / "last.pt")["model"]


def _moved(init, final, prefix):
    keys = [k for k in init if k.startswith(prefix) and init[k].is_floating_point()]
    return [k for k in keys if not torch.equal(init[k], final[k])], keys


def test_freeze_steps_holds_the_backbone_then_releases_it(shapes_root, tmp_path, capsys):
    init, final = _init_and_final(_cfg(shapes_root, tmp_path / "held", 3, freeze_steps={"backbone": 5}))
    assert "initial weights: backbone: random initialisation (model.backbone.pretrained=false)" in capsys.readouterr().out
    moved, keys = _moved(init, final, "backbone.body.")
    assert keys and not moved  # weights and BN statistics as initialised after 3 of its 5 held steps
    assert _moved(init, final, "neck.")[0]  # while the BiFPN trained
    init, final = _init_and_final(_cfg(shapes_root, tmp_path / "released", 3, freeze_steps={"backbone": 1}))
    assert _moved(init, final, "backbone.body.")[0]


def test_frozen_bn_keeps_backbone_statistics_and_affine_but_trains_its_convs(shapes_root, tmp_path):
    init, final = _init_and_final(_cfg(shapes_root, tmp_path / "fbn", 3, frozen_bn=["backbone"]))
    bn = [k for k in init if k.startswith("backbone.body.") and (".bn" in k) and init[k].is_floating_point()]
    assert bn and all(torch.equal(init[k], final[k]) for k in bn)
    convs = [k for k in init if k.startswith("backbone.body.") and init[k].dim() == 4]
    assert all(not torch.equal(init[k], final[k]) for k in convs)
    neck_bn = [k for k in init if k.startswith("neck.") and k.endswith("running_var")]
    assert any(not torch.equal(init[k], final[k]) for k in neck_bn)  # other parts' BN still learn


def test_held_part_gets_its_own_groups_and_bad_values_are_config_errors(shapes_root, tmp_path):
    cfg = _cfg(shapes_root, tmp_path / "g", 1)
    model = build_model(cfg, {"seg": ["a", "b"]})
    names = [g["name"] for g in build_param_groups(model, 0.1, 1e-4, own_groups=["backbone"])]
    assert "backbone/decay" in names and "default/decay" in names
    with pytest.raises(ConfigError, match="freeze_steps"):
        _cfg(shapes_root, tmp_path / "x", 1, freeze_steps={"backbone": -1})
    with pytest.raises(ConfigError, match="unknown model part"):
        freeze_batch_norm(model, ["backbone.nope"])
    with pytest.raises(ConfigError, match="unknown model part"):
        FreezeStepsHook(model, {"bakbone": 3})


def test_bn_momentum_sets_every_batch_norm_and_is_validated(shapes_root, tmp_path):
    from torch import nn

    from multitask_edet.engine.finetune import set_bn_momentum

    cfg = _cfg(shapes_root, tmp_path / "m", 1)
    model = build_model(cfg, {"seg": ["a", "b"]})
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {m.momentum for m in model.neck.modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}  # as built
    assert set_bn_momentum(model, None) == 0
    assert set_bn_momentum(model, 0.1) == len(bns) > 20 and {m.momentum for m in bns} == {0.1}
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="bn_momentum"):
            _cfg(shapes_root, tmp_path / "x", 1, bn_momentum=bad)


def test_trained_models_rebuild_without_their_initial_weights(shapes_root, tmp_path, monkeypatch, capsys):
    """A run started from backbone weights (a file, pretrained=true) is rebuilt for inference, resumed and
    shared with that file gone and the Hub unreachable: its own weights are all it needs."""
    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    import multitask_edet as mt
    from multitask_edet.engine.builders import load_for_inference
    from multitask_edet.errors import WeightsUnavailableError
    from multitask_edet.models.factory import create_model

    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_efficientnet").state_dict().items()}, str(weights))
    cfg = _cfg(shapes_root, tmp_path / "run", 2)
    cfg = build_config("smoke-shapes", tasks=["seg"], overrides={
        **cfg.to_dict(), "model": {**cfg.to_dict()["model"], "backbone": {"pretrained": True, "weights": str(weights)}}})
    run_training(cfg)
    assert f"initial weights: backbone: file {weights}" in capsys.readouterr().out
    header = f"# initial weights: backbone: file {weights}; BiFPN and heads: random initialisation\n"
    assert (cfg.run_dir() / "config.yaml").read_text().startswith(header)  # the run folder says it too
    weights.unlink()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    with pytest.raises(WeightsUnavailableError):  # what any fetch would now raise
        create_model("test-efficientdet", tasks=["seg"], backbone={"pretrained": True})

    run = cfg.run_dir()
    last = load_checkpoint(run / "last.pt")
    trained = load_for_inference(run / "last.pt").model
    assert torch.equal(trained.backbone.body.conv_stem.weight, last["model"]["backbone.body.conv_stem.weight"])
    shared = mt.from_pretrained(run)
    assert shared.config.backbone.pretrained and torch.equal(shared.backbone.body.conv_stem.weight,
                                                             trained.backbone.body.conv_stem.weight)
    strict = create_model(shared.config, checkpoint=str(run / "model.safetensors"))  # a strict checkpoint fetches nothing
    assert torch.equal(strict.backbone.body.conv_stem.weight, trained.backbone.body.conv_stem.weight)
    longer = build_config("smoke-shapes", tasks=["seg"], overrides={**cfg.to_dict(),
                                                                     "train": {**cfg.to_dict()["train"], "max_steps": 3}})
    assert run_training(longer, resume=run / "last.pt").step == 3
    assert f"initial weights: resumed from {run / 'last.pt'}" in capsys.readouterr().out
    assert (run / "config.yaml").read_text().startswith(header)  # a resume keeps the first start's line
