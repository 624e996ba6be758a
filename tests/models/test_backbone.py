"""Backbone: levels from timm's feature_info, extra levels by resampling, local weights only."""
import pytest
import timm
import torch

from multitask_edet.errors import CheckpointError, ConfigError
from multitask_edet.models.backbone import Backbone


def test_levels_and_channels_come_from_feature_info():
    bb = Backbone("test_efficientnet", min_level=2, max_level=7, out_channels=16)
    assert bb.levels == (2, 3, 4, 5, 6, 7)
    assert bb.channels == (24, 32, 48, 64, 16, 16)  # test_efficientnet: 24/32/48/64 at strides 4–32
    feats = bb(torch.randn(1, 3, 128, 128))
    assert [tuple(f.shape[1:]) for f in feats] == [(c, 128 // 2**lv, 128 // 2**lv) for c, lv in zip(bb.channels, bb.levels)]


def test_extra_levels_project_once_then_pool():
    bb = Backbone("test_efficientnet", min_level=3, max_level=8, out_channels=16)
    assert len(bb.extra) == 3  # P6, P7, P8
    assert hasattr(bb.extra[0], "proj") and hasattr(bb.extra[0], "down")  # 64 → 16 channels, then pool
    assert not hasattr(bb.extra[1], "proj") and not hasattr(bb.extra[2], "proj")
    # no projection when the backbone's top width already equals W
    assert not hasattr(Backbone("test_efficientnet", 3, 6, out_channels=64).extra[0], "proj")


def test_same_padding_pool_is_asymmetric():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(1, 64, 1, 1)
    same = Backbone("test_efficientnet", 3, 6, out_channels=64, padding="same").extra[0]
    torch_pad = Backbone("test_efficientnet", 3, 6, out_channels=64, padding="pytorch").extra[0]
    # TF SAME pads only bottom/right for a 3×3/2 pool on an even size; PyTorch pads both sides
    assert same(x)[0, 0].tolist() == [[10.0, 11.0], [14.0, 15.0]]
    assert torch_pad(x)[0, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]


def test_level_the_backbone_lacks_is_a_config_error():
    with pytest.raises(ConfigError, match="no stride-1 feature"):
        Backbone("test_efficientnet", min_level=0, max_level=7, out_channels=16)
    with pytest.raises(ConfigError, match="not a timm model"):
        Backbone("no_such_net", 3, 7, 16)


def test_weights_load_from_a_local_classifier_checkpoint(tmp_path):
    full = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path / "bb.pth"
    torch.save(full.state_dict(), path)  # includes classifier/conv_head, which features_only drops
    bb = Backbone("test_efficientnet", 3, 7, 16, weights=str(path))
    torch.testing.assert_close(bb.body.conv_stem.weight, full.conv_stem.weight)

    from safetensors.torch import save_file

    st = tmp_path / "bb.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(st))
    bb2 = Backbone("test_efficientnet", 3, 7, 16, weights=str(st))
    torch.testing.assert_close(bb2.body.blocks[1][0].conv_pwl.weight, full.blocks[1][0].conv_pwl.weight)


def test_bad_backbone_weights_are_checkpoint_errors(tmp_path):
    sd = timm.create_model("test_efficientnet", pretrained=False).state_dict()
    del sd["conv_stem.weight"]
    sd["blocks.0.0.typo.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): conv_stem.weight.*unexpected keys \(1\): blocks.0.0.typo"):
        Backbone("test_efficientnet", 3, 7, 16, weights=str(path))
    with pytest.raises(CheckpointError, match="does not exist"):
        Backbone("test_efficientnet", 3, 7, 16, weights=str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read.*corrupt"):
        Backbone("test_efficientnet", 3, 7, 16, weights=str(junk))
