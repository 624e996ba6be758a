"""BN folding for inference (models/fuse.py): same outputs, no BN left, original untouched."""
import pytest
import torch
from torch import nn

from multitask_edet.models.factory import create_model
from multitask_edet.models.fuse import FrozenFusion, fold_conv_bn, fuse_for_inference, remaining_batchnorms


@torch.no_grad()
def _randomise_bn(model: nn.Module, size: int = 128) -> nn.Module:
    """BN statistics of a real batch and random affines (fresh BNs fold to nothing and prove nothing)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0  # running statistics := those of the batch below
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    for n, p in model.named_parameters():
        if n.endswith("fuse.weight"):
            nn.init.uniform_(p, 0.0, 2.0)
    if isinstance(model, nn.BatchNorm2d):
        model.train()(torch.randn(4, model.num_features, 8, 8) * 2 + 1)
    else:
        model.train()(torch.randn(2, 3, size, size))
    return model


def _outputs(out) -> list[torch.Tensor]:
    return out["det"]["cls"] + out["det"]["box"] + ([out["seg"]] if "seg" in out else [])


@pytest.mark.parametrize("name", ["test-efficientdet-seg", "tf_test-efficientdet"])
def test_fused_model_equals_unfused_and_has_no_batchnorm(name):
    model = _randomise_bn(create_model(name)).eval()
    fused = fuse_for_inference(model)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ref, out = _outputs(model(x)), _outputs(fused(x))
    assert len(ref) == len(out) >= 10
    for a, b in zip(ref, out):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-5 * max(1.0, a.abs().max().item())
    assert ref[0].std().item() > 1e-2  # non-trivial outputs: the comparison means something
    # backbone (timm blocks), extra levels, BiFPN, det and seg heads: every BN is folded
    assert remaining_batchnorms(model) and remaining_batchnorms(fused) == []
    assert fused.folded_batchnorms == len(remaining_batchnorms(model))
    # fusion weights became constants; the original keeps its parameters and BNs
    assert not any(n.endswith("fuse.weight") for n, _ in fused.named_parameters())
    assert any(isinstance(m, FrozenFusion) for m in fused.modules())
    assert any(n.endswith("fuse.weight") for n, _ in model.named_parameters())


def test_fuse_in_place_returns_the_model_in_eval_mode():
    model = create_model("test-efficientdet").train()
    fused = fuse_for_inference(model, inplace=True)
    assert fused is model and not model.training
    assert remaining_batchnorms(model) == []


def test_fold_conv_bn_keeps_the_conv_class_and_is_exact():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    bn = _randomise_bn(nn.BatchNorm2d(6)).eval()
    folded = fold_conv_bn(conv, bn)
    assert type(folded) is nn.Conv2d and folded.bias is not None
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-5, atol=1e-6)
