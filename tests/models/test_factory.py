"""create_model: validated overrides, tasks → levels, checkpoints."""
import pytest
import torch
from safetensors.torch import save_file

from multitask_edet.config import get_model_config
from multitask_edet.errors import CheckpointError, ConfigError
from multitask_edet.models import create_model


def test_overrides_are_validated():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) neck.chanels; valid keys under neck: channels"):
        create_model("test-efficientdet", neck={"chanels": 8})
    with pytest.raises(ConfigError, match="'bogus' is neither a model setting \\(backbone, image_size.*nor a task of the model \\(tasks: det\\)"):
        create_model("test-efficientdet", bogus=1)
    with pytest.raises(ConfigError, match="unknown config key\\(s\\) det.levles; valid keys under det: anchor_scale"):
        create_model("test-efficientdet", det={"levles": (3,)})
    with pytest.raises(ConfigError, match="not one of"):
        create_model("test-efficientdet", neck={"fusion": "max"})
    with pytest.raises(ConfigError, match="unknown model 'efficientdet-d9'"):
        create_model("efficientdet-d9")


def test_num_classes_shortcut_only_when_unambiguous():
    m = create_model("test-efficientdet", num_classes=7)
    assert m.heads["det"].num_classes == 7 and m.config.tasks["det"]["num_classes"] == 7
    assert create_model("test-efficientdet", tasks="seg", num_classes=4).heads["seg"].num_classes == 4
    with pytest.raises(ConfigError, match="ambiguous"):
        create_model("test-efficientdet-seg", num_classes=7)
    m = create_model("test-efficientdet-seg", det={"num_classes": 7}, seg={"num_classes": 2})
    assert (m.heads["det"].num_classes, m.heads["seg"].num_classes) == (7, 2)


def test_config_records_what_was_built():
    m = create_model("test-efficientdet", tasks="det,seg", neck={"channels": 24})
    assert list(m.config.tasks) == ["det", "seg"] and m.config.neck.min_level == 2
    # every task's full options, with its type: the config alone rebuilds the same network
    assert m.config.tasks["seg"]["type"] == "seg" and m.config.tasks["seg"]["repeats"] == 1
    assert m.config.tasks["det"]["repeats"] == 2 and m.config.tasks["det"]["loss"]["gamma"] == 1.5
    again = create_model(m.config)
    assert again.config == m.config and list(again.state_dict()) == list(m.state_dict())
    assert m.config.mean == (0.485, 0.456, 0.406) and m.config.std == (0.229, 0.224, 0.225)
    assert m.neck.channels == 24 and m.config.name == "test-efficientdet"
    cfg = get_model_config("test-efficientdet", neck={"repeats": 1})
    assert len(create_model(cfg).neck.layers) == 1


def test_unknown_task():
    with pytest.raises(ConfigError, match="task 'depth': unknown task type 'depth'; registered types: .*det.*seg"):
        create_model("test-efficientdet", tasks=("depth",))
    # a seg head under another name, with its own class count
    m = create_model("test-efficientdet", tasks={"det": {}, "lane": {"type": "seg", "num_classes": 2}})
    assert m.heads["lane"].num_classes == 2 and m.config.tasks["lane"]["type"] == "seg"


def test_checkpoint_roundtrip(tmp_path):
    a = create_model("test-efficientdet-seg").eval()
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(path))
    b = create_model("test-efficientdet-seg", checkpoint=path).eval()
    pth = tmp_path / "m.pth"
    torch.save({"model": a.state_dict(), "epoch": 3}, pth)  # a wrapped training checkpoint
    c = create_model("test-efficientdet-seg", checkpoint=pth).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(a(x)["seg"], b(x)["seg"]) and torch.equal(a(x)["seg"], c(x)["seg"])


def test_checkpoint_of_another_model_lists_keys(tmp_path):
    det_only = create_model("test-efficientdet")
    path = tmp_path / "det.safetensors"
    save_file({k: v.contiguous() for k, v in det_only.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): .*heads.seg"):
        create_model("test-efficientdet-seg", checkpoint=path)
    with pytest.raises(CheckpointError, match=r"shape mismatches .*heads.det.cls_net.predict.*pass det=\{\"num_classes\": 5\}"):
        create_model("test-efficientdet", num_classes=3, checkpoint=path)


def test_backbone_weights_shortcut(tmp_path):
    import timm

    full = timm.create_model("test_efficientnet")
    path = tmp_path / "b.pth"
    torch.save(full.state_dict(), path)
    m = create_model("test-efficientdet", backbone_weights=str(path))
    assert m.config.backbone.weights == str(path)
    torch.testing.assert_close(m.backbone.body.conv_stem.weight, full.conv_stem.weight)


def test_config_from_a_mapping():
    from multitask_edet.config_utils import to_dict

    cfg = to_dict(get_model_config("test-efficientdet"))
    cfg["neck"]["channels"] = 8
    assert create_model(cfg).neck.channels == 8
    with pytest.raises(ConfigError, match="model.neck.bad"):
        create_model({"neck": {"bad": 1}})
