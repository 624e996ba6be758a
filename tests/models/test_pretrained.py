"""Pretrained backbone weights: timm's own loading call, local files, offline errors, input statistics."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from multitask_edet.config import MODEL_CONFIGS, PRETRAINED_TAGS
from multitask_edet.errors import CheckpointError, ConfigError, WeightsUnavailableError
from multitask_edet.models.backbone import Backbone, backbone_input_stats, pretrained_source
from multitask_edet.models.factory import create_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def timm_calls(monkeypatch):
    """Record every timm.create_model call the backbone makes, and run it for real."""
    calls = []
    real = timm.create_model

    def spy(name, *args, **kwargs):
        calls.append((name, kwargs))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    return calls


def _classifier_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    sd = timm.create_model("test_efficientnet", pretrained=False).state_dict()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return sd


def test_weights_file_from_the_config_goes_through_timms_pretrained_call(tmp_path, timm_calls):
    sd = _classifier_checkpoint(tmp_path / "model.safetensors")
    model = create_model("test-efficientdet", backbone={"pretrained": True, "weights": str(tmp_path / "model.safetensors")})
    loads = [kw for _, kw in timm_calls if kw.get("pretrained")]
    assert len(loads) == 1 and loads[0]["pretrained_cfg_overlay"] == {"file": str(tmp_path / "model.safetensors")}
    assert loads[0]["features_only"] is True
    body = model.backbone.body.state_dict()
    assert len(body) > 50
    for k, v in body.items():  # every tensor of the feature extractor is the file's, exactly
        assert torch.equal(v, sd[k]), k
    assert model.backbone.weights_source.startswith("file ")


def test_pretrained_false_is_a_random_init_and_says_so(timm_calls):
    bb = Backbone("test_efficientnet", 3, 5, 16)
    assert not any(kw.get("pretrained") for _, kw in timm_calls)
    assert "random" in bb.weights_source


def test_offline_without_cache_is_a_typed_error_naming_the_repo_and_the_ways_out(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(WeightsUnavailableError) as e:
        Backbone("test_efficientnet", 3, 5, 16, pretrained=True)
    msg = str(e.value)
    assert "\n" not in msg and "timm/test_efficientnet.r160_in1k" in msg
    for way in ("run once with network access", "model.backbone.weights=PATH", "model.backbone.pretrained=false"):
        assert way in msg


def test_cli_offline_prints_one_line_exit_2_and_writes_no_run_folder(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty_hf"), MTEDET_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "multitask_edet", "train", "--config", "smoke-shapes", "--output", str(run),
           "--set", "model.backbone.pretrained=true", "--set", "data.options={num_train: 4, num_val: 2, image_size: 64}"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("mtedet train: error:")]
    assert len(lines) == 1 and "timm/test_efficientnet.r160_in1k" in lines[0] and "Traceback" not in out.stderr
    assert "model.backbone.pretrained=false" in lines[0]
    assert not run.exists() or not any(run.iterdir())


def test_bad_and_missing_weights_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Backbone("test_efficientnet", 3, 5, 16, weights=str(tmp_path / "nope.safetensors"))
    sd = timm.create_model("test_efficientnet").state_dict()
    torch.save({("x" + k): v for k, v in sd.items()}, tmp_path / "renamed.pth")
    # timm loads features_only models non-strictly: without our check this would be a silent random init
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): blocks"):
        Backbone("test_efficientnet", 3, 5, 16, weights=str(tmp_path / "renamed.pth"))


def test_every_variant_names_timm_weights_that_exist():
    for name in MODEL_CONFIGS.names():
        b = MODEL_CONFIGS.get(name).backbone
        if b.name.startswith("test_"):
            continue
        arch, overlay = pretrained_source(b.name, b.pretrained_tag)
        cfg = timm.models.get_pretrained_cfg(overlay.get("hf_hub_id", "").removeprefix("timm/") or arch)
        assert cfg is not None and cfg.hf_hub_id, name
        if b.name.startswith("tf_"):
            assert cfg.hf_hub_id.endswith(".aa_in1k"), name  # the TF AutoAugment checkpoints (paper §4.1)
    assert set(PRETRAINED_TAGS) >= {MODEL_CONFIGS.get(n).backbone.name for n in MODEL_CONFIGS.names()} - {"test_efficientnet"}


def test_unknown_tag_is_a_config_error_listing_the_tags():
    with pytest.raises(ConfigError, match="ra_in1k"):
        pretrained_source("efficientnet_b0", "no_such_tag")
    with pytest.raises(ConfigError, match="none at all for efficientnet_b6"):
        pretrained_source("efficientnet_b6")


def test_backbone_input_stats_from_timms_pretrained_config():
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert backbone_input_stats("efficientnet_b0") == imagenet
    assert backbone_input_stats("tf_efficientnet_b3", "aa_in1k") == imagenet
    assert backbone_input_stats("tf_efficientnet_lite0") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert backbone_input_stats("efficientnet_b6", "tf_efficientnet_b6.aa_in1k") == imagenet
    with pytest.raises(ConfigError):
        backbone_input_stats("no_such_net")


def test_real_recipes_start_from_pretrained_weights_demo_and_smoke_do_not():
    from multitask_edet.engine.config import build_config, list_recipes

    for name in list_recipes():
        cfg = build_config(name)
        pretrained = cfg.model.backbone.get("pretrained", False)
        if name.startswith(("det-coco-", "seg-voc-", "joint-", "bdd100k-", "cityscapes-", "coco-panoptic-")):
            assert pretrained is True, name
        elif name in ("det-voc-d0", "finetune-det"):  # fine-tune effdet's COCO detector, backbone included
            assert cfg.model.checkpoint == "effdet:efficientdet_d0" and cfg.model.checkpoint_strict is False
        elif name == "finetune-seg":
            assert pretrained is True and cfg.train.bn_momentum == 0.1 and cfg.train.lr_mult == {"backbone": 0.1}
            # few fresh layers on the pretrained features (benchmarks/RESULTS.md, "Pretrained vs scratch")
            assert cfg.model.neck["repeats"] == 1
            assert cfg.model.neck["norm"] == "none" and cfg.model.neck["node_conv"] is False
            seg = cfg.task_sections["seg"]
            assert seg["head"] == "semantic-fpn" and seg["merge_levels"] == [3, 4, 5] and seg["dropout"] == 0.2
        elif name.startswith(("demo-", "smoke-")):
            assert not pretrained and cfg.model.checkpoint is None, name
        else:
            raise AssertionError(f"recipe {name}: decide where its weights come from and add it here")
