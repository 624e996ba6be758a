"""BiFPN topology as data, fusion arithmetic (paper §3.3), and the neck as a module."""
import pytest
import torch

from multitask_edet.errors import ConfigError
from multitask_edet.models.bifpn import (
    TOPOLOGIES,
    BiFPN,
    FastFusion,
    FpnNode,
    SoftmaxFusion,
    SumFusion,
    layer_outputs,
    register_topology,
)


@pytest.mark.parametrize("levels", [(3, 7), (2, 7), (3, 8)])
def test_bifpn_nodes_match_the_reference_config(levels):
    fpn_config = pytest.importorskip("effdet.config.fpn_config")
    ref = fpn_config.bifpn_config(*levels).nodes
    ours = TOPOLOGIES.get("bifpn")(*levels)
    assert [(n.level, n.inputs) for n in ours] == [(r["feat_level"], tuple(r["inputs_offsets"])) for r in ref]


def test_bifpn_p3_p7_by_hand():
    nodes = TOPOLOGIES.get("bifpn")(3, 7)
    # top-down P6..P3 then bottom-up P4..P7; P4's bottom-up node takes input, top-down node, P3 out
    assert [n.level for n in nodes] == [6, 5, 4, 3, 4, 5, 6, 7]
    assert nodes[4] == FpnNode(4, (1, 7, 8))
    assert nodes[-1] == FpnNode(7, (4, 11))  # top level: input + P6 out, no top-down node
    assert layer_outputs(nodes, 3, 7) == (8, 9, 10, 11, 12)


@pytest.mark.parametrize("name", ["fpn", "pan"])
def test_other_topologies_cover_every_level(name):
    nodes = TOPOLOGIES.get(name)(2, 7)
    assert sorted({n.level for n in nodes}) == list(range(2, 8))
    outs = layer_outputs(nodes, 2, 7)
    assert all(o >= 6 for o in outs)  # every output is a node (FPN width), not a raw input


def test_topology_missing_a_level_is_rejected():
    register_topology("broken", lambda lo, hi: (FpnNode(lo, (0, 1)),), override=True)
    try:
        with pytest.raises(ConfigError, match="no node on level"):
            BiFPN((3, 4, 5), (8, 8, 8), 8, 1, topology="broken")
    finally:
        TOPOLOGIES.unregister("broken")


def test_unknown_topology_and_fusion_list_valid_names():
    with pytest.raises(ConfigError, match="bifpn"):
        BiFPN((3, 4), (8, 8), 8, 1, topology="nope")
    with pytest.raises(ConfigError, match="fast"):
        BiFPN((3, 4), (8, 8), 8, 1, fusion="nope")


def test_fusion_arithmetic():
    a, b, c = torch.randn(3, 1, 2, 4, 4).unbind(0)
    fast = FastFusion(3)
    with torch.no_grad():
        fast.weight.copy_(torch.tensor([2.0, -1.0, 1.0]))  # relu drops the negative weight
    expected = (2 * a + 0 * b + 1 * c) / (3 + 1e-4)
    torch.testing.assert_close(fast([a, b, c]), expected)

    soft = SoftmaxFusion(2)
    with torch.no_grad():
        soft.weight.copy_(torch.tensor([0.0, 1.0]))
    w = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    torch.testing.assert_close(soft([a, b]), w[0] * a + w[1] * b)
    torch.testing.assert_close(SumFusion(3)([a, b, c]), a + b + c)
    assert list(SumFusion(3).parameters()) == []


def test_fusion_does_not_modify_its_inputs_and_has_gradients():
    a, b = torch.randn(2, 1, 3, 4, 4, requires_grad=True).unbind(0)
    a0, b0 = a.detach().clone(), b.detach().clone()
    fast = FastFusion(2)
    fast([a, b]).sum().backward()
    assert torch.equal(a.detach(), a0) and torch.equal(b.detach(), b0)
    assert fast.weight.grad is not None and torch.isfinite(fast.weight.grad).all()


@pytest.mark.parametrize("topology", ["bifpn", "fpn", "pan"])
@pytest.mark.parametrize("fusion", ["fast", "softmax", "sum"])
def test_neck_shapes(topology, fusion):
    levels, chans = (2, 3, 4, 5, 6), (24, 32, 48, 64, 16)
    neck = BiFPN(levels, chans, 16, repeats=2, fusion=fusion, topology=topology)
    feats = [torch.randn(1, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate(chans)]
    out = neck(feats)
    assert [tuple(o.shape) for o in out] == [(1, 16, 64 // 2**i, 64 // 2**i) for i in range(5)]
    assert all(torch.isfinite(o).all() for o in out)
    # only the first layer projects (its inputs have the backbone's widths)
    projections = [n for n, _ in neck.named_modules() if n.endswith(".proj")]
    assert projections and all(n.startswith("layers.0.") for n in projections)


def test_neck_without_norm_has_biases_instead_of_batchnorm():
    levels, chans = (2, 3, 4), (24, 32, 48)
    neck = BiFPN(levels, chans, 16, repeats=2, norm="none")
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in neck.modules())
    names = dict(neck.named_parameters())
    # every conv that had a BN after it (projections, the separable convs' pointwise part) has a bias
    assert "layers.0.nodes.0.inputs.0.proj.conv.bias" in names
    assert "layers.1.nodes.0.conv.conv_pw.bias" in names
    feats = [torch.randn(2, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate(chans)]
    out = neck.train()(feats)
    # no batch statistics: even in training mode an image's output does not depend on the rest of the batch
    torch.testing.assert_close(neck([f[:1] for f in feats])[0], out[0][:1])
    with pytest.raises(ConfigError, match="bn"):
        BiFPN(levels, chans, 16, 1, norm="gn")


def test_linear_nodes_are_their_weighted_fusion():
    levels, chans = (3, 4), (16, 16)
    neck = BiFPN(levels, chans, 16, repeats=1, node_conv=False)
    with torch.no_grad():
        for node in neck.layers[0].nodes:
            node.fuse.weight.copy_(torch.tensor([3.0, 1.0, 2.0][: node.fuse.weight.numel()]))
    p3, p4 = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4)
    eps = FastFusion.eps
    up = torch.nn.functional.interpolate
    # top-down P3 = (3·P3 + 1·up(P4)) / 4; bottom-up P4 = (3·P4 + 1·pool(P3 out)) / 4
    p3_out = (3 * p3 + up(p4, scale_factor=2.0, mode="nearest")) / (4 + eps)
    pooled = neck.layers[0].nodes[1].inputs[1](p3_out)  # the max-pool resampling (tested with the model)
    p4_out = (3 * p4 + pooled) / (4 + eps)
    out = neck([p3, p4])
    torch.testing.assert_close(out[0], p3_out)
    torch.testing.assert_close(out[1], p4_out)
    assert sum(p.numel() for p in neck.parameters()) == 2 + 2  # the fusion weights only
