"""effdet as the oracle: its weights, converted, give our model the same outputs."""
import pytest
import torch

effdet = pytest.importorskip("effdet")

from multitask_edet.compat.effdet import (  # noqa: E402
    convert_effdet_state_dict,
    is_effdet_state_dict,
)
from multitask_edet.errors import CheckpointError  # noqa: E402
from multitask_edet.models.factory import convert_effdet_file, create_model, effdet_model  # noqa: E402

SIZE = 256  # divisible by 128; small enough for CPU, every level still > 1 pixel but P7 (2x2)


def _randomised_effdet(name: str, size: int = SIZE):
    """A reference model whose BN statistics, biases and fusion weights are all non-trivial,
    so a wrong mapping or a missed bias fold shows up in the outputs."""
    ref = effdet.create_model(name, pretrained=False, pretrained_backbone=False, image_size=(size, size))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(1 + torch.randn(m.weight.shape, generator=g) * 0.1)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for n, p in ref.named_parameters():
            if n.endswith("edge_weights"):
                p.copy_(torch.rand(p.shape, generator=g) * 2)
    return ref.eval()


@pytest.mark.parametrize(
    "effdet_name, ours",
    [
        ("tf_efficientdet_d0", "tf_efficientdet-d0"),
        ("tf_efficientdet_d1", "tf_efficientdet-d1"),
        ("efficientdet_d0", "efficientdet-d0"),
    ],
)
def test_converted_weights_give_identical_outputs(effdet_name, ours):
    ref = _randomised_effdet(effdet_name)
    model = create_model(ours, tasks=("det",))
    model.load_state_dict(convert_effdet_state_dict(ref.state_dict(), model))
    model.eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        ref_cls, ref_box = ref(x)
        out = model(x)["det"]
    assert len(out["cls"]) == len(ref_cls) == 5
    for a, b in zip(ref_cls + ref_box, out["cls"] + out["box"]):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-4
    # the outputs are not trivially equal (e.g. all ~prior): the check above means something
    assert ref_cls[0].std().item() > 1e-2


def test_tf_biases_are_folded_and_effdet_names_accepted():
    ref = _randomised_effdet("tf_efficientdet_d0")
    sd = ref.state_dict()
    assert is_effdet_state_dict(sd)
    out = convert_effdet_state_dict(sd, effdet_model("tf_efficientdet_d0", sd))  # effdet's own name works too
    # effdet's redundant conv biases have no counterpart: they live in the BN means now
    assert not any(k.endswith("conv_pw.bias") and ".predict." not in k for k in out)
    pw_bias = sd["fpn.cell.0.fnode.0.after_combine.conv.conv_pw.bias"]
    mean = sd["fpn.cell.0.fnode.0.after_combine.conv.bn.running_mean"]
    torch.testing.assert_close(out["neck.layers.0.nodes.0.conv.bn.running_mean"], mean - pw_bias)


def test_checkpoint_file_roundtrip_and_direct_load(tmp_path):
    ref = _randomised_effdet("efficientdet_d0")
    src = tmp_path / "effdet_d0.pth"
    torch.save({"state_dict": ref.state_dict()}, src)
    dst = tmp_path / "d0.safetensors"
    convert_effdet_file(src, dst, "efficientdet-d0")
    a = create_model("efficientdet-d0", checkpoint=dst).eval()
    b = create_model("efficientdet-d0", checkpoint=src).eval()  # effdet file, converted on load
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ya, yb = a(x)["det"]["cls"], b(x)["det"]["cls"]
    for u, v in zip(ya, yb):
        assert torch.equal(u, v)


def test_wrong_variant_lists_missing_and_unexpected_keys():
    sd = _randomised_effdet("efficientdet_d0").state_dict()
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): backbone.body.blocks.*shape mismatches"):
        convert_effdet_state_dict(sd, effdet_model("efficientdet-d1", sd))  # D1 has 4 BiFPN repeats and W=88
    sd["class_net.bogus.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected keys .*class_net.bogus.weight"):
        convert_effdet_state_dict(sd, effdet_model("efficientdet-d0", sd))


def test_all_tf_variants_map_one_to_one():
    """Every effdet tf_ variant (D0–D7x) maps onto ours key for key and shape for shape
    (both built on the meta device: no memory, no forward)."""
    for n in ["d2", "d3", "d4", "d5", "d6", "d7", "d7x"]:
        with torch.device("meta"):
            ref = effdet.create_model(f"tf_efficientdet_{n}", pretrained=False, pretrained_backbone=False)
        out = convert_effdet_state_dict(ref.state_dict(), effdet_model(f"tf_efficientdet-{n}", ref.state_dict()))  # raises on any mismatch
        assert len(out) > 0


def test_training_mode_outputs_and_gradients_match():
    """Train mode (BN on batch statistics), drop-path off: same loss, same gradients."""
    ref = _randomised_effdet("efficientdet_d0", size=128).train()
    model = create_model("efficientdet-d0").train()
    model.load_state_dict(convert_effdet_state_dict(ref.state_dict(), model))
    for m in list(ref.modules()) + list(model.modules()):
        if hasattr(m, "drop_prob"):  # timm DropPath: stochastic depth would differ per run
            m.drop_prob = 0.0
    x = torch.randn(2, 3, 128, 128)
    # our backbone runs channels_last on CPU; give effdet the same layout, else summation-order
    # noise (amplified by train-mode BN over 2 values at P7) exceeds the gradient tolerance
    ref_cls, ref_box = ref(x.contiguous(memory_format=torch.channels_last))
    out = model(x)["det"]
    ref_loss = sum(t.square().mean() for t in ref_cls + ref_box)
    loss = sum(t.square().mean() for t in out["cls"] + out["box"])
    ref_loss.backward()
    loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    ours = dict(model.named_parameters())
    for ref_name, p in ref.named_parameters():
        name = {
            "fpn.cell.0.fnode.4.combine.edge_weights": "neck.layers.0.nodes.4.fuse.weight",
            "fpn.cell.2.fnode.7.after_combine.conv.conv_dw.weight": "neck.layers.2.nodes.7.conv.conv_dw.weight",
            "fpn.resample.3.conv.conv.weight": "backbone.extra.0.proj.conv.weight",
            "class_net.conv_rep.0.conv_pw.weight": "heads.det.cls_net.convs.0.conv_pw.weight",
            "box_net.bn_rep.1.3.bn.weight": "heads.det.box_net.bns.3.1.weight",
            "backbone.conv_stem.weight": "backbone.body.conv_stem.weight",
        }.get(ref_name)
        if name:
            torch.testing.assert_close(ours[name].grad, p.grad, rtol=1e-3, atol=1e-4 * p.grad.abs().max().item())
