"""Heads: the detection nets' structure, the segmentation head, and the head of a user's task."""
import math

import pytest
import torch
from torch import nn

from multitask_edet.errors import ConfigError
import dataclasses

from multitask_edet.models import create_model
from multitask_edet.tasks import TASKS, Task, register_task
from multitask_edet.models.heads import DetectionHead, SegmentationHead, SemanticFPNHead


def test_detection_head_structure():
    head = DetectionHead(16, num_classes=3, num_anchors=9, repeats=2, levels=(3, 4, 5, 6, 7, 8))
    net = head.cls_net
    assert len(net.convs) == 2  # conv weights shared across levels
    assert len(net.bns) == 6 and all(len(b) == 2 for b in net.bns)  # one BN per level and repeat
    bn = net.bns[0][0]
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)
    assert net.predict.conv_pw.out_channels == 27 and head.box_net.predict.conv_pw.out_channels == 36
    prior = -math.log((1 - 0.01) / 0.01)
    assert torch.allclose(net.predict.conv_pw.bias, torch.full((27,), prior))
    assert torch.count_nonzero(head.box_net.predict.conv_pw.bias) == 0


def test_detection_head_starts_at_the_prior():
    head = DetectionHead(16, num_classes=3, levels=(3, 4)).eval()
    out = head([torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4)])
    p = torch.sigmoid(out["cls"][0]).mean().item()
    assert 0.001 < p < 0.1  # near prior_prob = 0.01 (weights are small, bias dominates)


def test_segmentation_head_changes_width_in_its_first_conv():
    head = SegmentationHead(16, num_classes=4, channels=32, repeats=2, level=2)
    assert head.levels == (2,)
    assert head.convs[0].conv_pw.in_channels == 16 and head.convs[0].conv_pw.out_channels == 32
    out = head([torch.randn(2, 16, 8, 12)])
    assert tuple(out.shape) == (2, 4, 32, 48)
    # bilinear upsampling with align_corners=False: a constant map stays constant
    head.eval()
    with torch.no_grad():
        const = head.classifier(head.convs(torch.ones(1, 16, 8, 12)))
    assert torch.allclose(
        nn.functional.interpolate(const, scale_factor=4.0, mode="bilinear", align_corners=False)[..., 0, 0],
        const[..., 0, 0],
    )


def test_segmentation_head_adds_the_merged_levels_upsampled_before_its_convs():
    torch.manual_seed(0)
    merged = SegmentationHead(16, num_classes=4, channels=8, repeats=1, level=2, merge_levels=(3, 4)).eval()
    plain = SegmentationHead(16, num_classes=4, channels=8, repeats=1, level=2).eval()
    plain.load_state_dict(merged.state_dict())  # the merge adds no weights
    assert merged.levels == (2, 3, 4) and plain.levels == (2,)
    p2, p3, p4 = torch.randn(2, 16, 16, 12), torch.randn(2, 16, 8, 6), torch.randn(2, 16, 4, 3)
    up = lambda x: nn.functional.interpolate(x, size=(16, 12), mode="bilinear", align_corners=False)  # noqa: E731
    with torch.no_grad():
        got = merged([p2, p3, p4])
        assert got.shape == (2, 4, 64, 48)
        assert torch.allclose(got, plain([p2 + up(p3) + up(p4)]), atol=1e-5)
        assert not torch.allclose(got, plain([p2]), atol=1e-3)


def test_segmentation_head_dropout_acts_in_training_only():
    torch.manual_seed(0)
    head = SegmentationHead(16, num_classes=4, channels=8, repeats=1, dropout=0.5)
    plain = SegmentationHead(16, num_classes=4, channels=8, repeats=1)
    plain.load_state_dict(head.state_dict())  # dropout adds no weights: checkpoints load either way
    x = [torch.randn(2, 16, 8, 8)]
    head.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(head(x), plain(x))  # evaluation and export: no dropout
    head.train(), plain.train()
    with torch.no_grad():
        assert not torch.allclose(head(x), plain(x), atol=1e-3)  # training: whole channels dropped


@pytest.mark.parametrize("merge_levels", [[], [3, 4, 5]])
def test_the_model_routes_merged_levels_to_the_seg_head(merge_levels):
    """Perturbing the BiFPN's P4 output changes the seg logits exactly when the head merges P4."""
    torch.manual_seed(0)
    model = create_model("test-efficientdet", tasks={"seg": {"num_classes": 3, "merge_levels": merge_levels}}).eval()
    assert model.heads["seg"].levels == (2, *merge_levels) and model.min_level == 2
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = model(images)["seg"]
        hook = model.neck.register_forward_hook(lambda m, args, out: [f + 1.0 if i == 2 else f for i, f in enumerate(out)])
        got = model(images)["seg"]
        hook.remove()
    assert got.shape == ref.shape == (1, 3, 128, 128)
    if merge_levels:
        assert (got - ref).abs().max() > 1e-3
    else:
        assert torch.equal(got, ref)


def test_semantic_fpn_head_has_one_conv_per_octave_and_sums_the_levels():
    torch.manual_seed(0)
    head = SemanticFPNHead(16, num_classes=4, channels=48, level=2, merge_levels=(3, 4, 5)).eval()
    assert head.levels == (2, 3, 4, 5)
    convs = [[m for m in stack.modules() if isinstance(m, nn.Conv2d)] for stack in head.stacks]
    assert [len(c) for c in convs] == [1, 1, 2, 3]  # max(1, k - level) convs for level k
    assert all(c[0].in_channels == 16 and c[-1].out_channels == 48 for c in convs)
    norms = [m for m in head.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 7 and {n.num_groups for n in norms} == {16}  # gcd(32, 48)
    assert SemanticFPNHead(16, channels=128).stacks[0][0][1].num_groups == 32
    feats = [torch.randn(2, 16, 16 // 2**i, 24 // 2**i) for i in range(4)]
    with torch.no_grad():
        got = head(feats)
        # by hand: every stack brought to P2's size, summed, classified, upsampled ×4
        total = sum(stack(f) for stack, f in zip(head.stacks, feats))
        want = nn.functional.interpolate(head.classifier(total), scale_factor=4.0, mode="bilinear", align_corners=False)
    assert got.shape == (2, 4, 64, 96) and torch.allclose(got, want, atol=1e-6)
    conv, norm = head.stacks[3][0][0], head.stacks[3][0][1]
    by_hand = nn.functional.relu(nn.functional.group_norm(conv(feats[3]), 16, norm.weight, norm.bias, norm.eps))
    assert torch.allclose(head.stacks[3][0](feats[3]), nn.functional.interpolate(by_hand, scale_factor=2.0, mode="bilinear",
                                                                                 align_corners=False), atol=1e-6)
    # each level's own output reaches the logits
    with torch.no_grad():
        moved = head([feats[0], feats[1], feats[2], feats[3] + 1.0])
    assert (moved - got).abs().max() > 1e-3
    # GroupNorm: the same statistics in training and evaluation (no running buffers)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in head.modules())
    with torch.no_grad():
        assert torch.allclose(head.train()(feats), got, atol=1e-6)  # no dropout configured


def test_the_seg_head_option_selects_the_head_and_is_validated():
    torch.manual_seed(0)
    model = create_model("test-efficientdet", tasks={"seg": {"num_classes": 3, "head": "semantic-fpn",
                                                             "merge_levels": [3, 4], "dropout": 0.2}})
    head = model.heads["seg"]
    assert isinstance(head, SemanticFPNHead) and head.levels == (2, 3, 4) and isinstance(head.dropout, nn.Dropout2d)
    assert model.config.tasks["seg"]["head"] == "semantic-fpn"
    assert model.eval()(torch.randn(1, 3, 128, 128))["seg"].shape == (1, 3, 128, 128)
    assert isinstance(create_model("test-efficientdet", tasks={"seg": {"num_classes": 3}}).heads["seg"], SegmentationHead)
    with pytest.raises(ConfigError, match="head"):
        create_model("test-efficientdet", tasks={"seg": {"num_classes": 3, "head": "unet"}})


# --- a task defined here, outside the library: the model factory asks it for its head -----


@dataclasses.dataclass(frozen=True)
class HeatmapConfig:
    levels: tuple[int, ...] = (3,)


class HeatmapHead(nn.Module):
    """A one-channel heat map on one level (say, object centres)."""

    def __init__(self, in_channels: int, levels=(3,)):
        super().__init__()
        self.levels = tuple(levels)
        self.net = nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.SiLU(), nn.Conv2d(in_channels, 1, 1))

    def forward(self, feats):
        return self.net(feats[0])


@register_task("test_heatmap", override=True)
class HeatmapTask(Task):
    Config = HeatmapConfig

    def build_head(self, in_channels, padding="pytorch"):
        return HeatmapHead(in_channels, self.config.levels)

    def loss(self, outputs, batch):
        return {}

    def postprocess(self, outputs, batch):
        return list(outputs)

    def evaluator(self, dataset=None, output_dir=None):
        raise NotImplementedError


def test_user_task_head_trains_with_the_trunk():
    torch.manual_seed(0)
    model = create_model("test-efficientdet", tasks=("test_heatmap",))
    assert (model.min_level, model.max_level) == (3, 7) and list(model.heads) == ["test_heatmap"]
    assert model.config.tasks["test_heatmap"] == {"type": "test_heatmap", "levels": [3]}
    x = torch.randn(2, 3, 128, 128)
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:8, 6:10] = 1.0
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = nn.functional.binary_cross_entropy_with_logits(model(x)["test_heatmap"], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    # the trunk is trained too, not only the head
    assert model.backbone.body.conv_stem.weight.grad.abs().sum() > 0


def test_user_task_options_instances_and_errors():
    # options move the trunk: a head on P2 extends the BiFPN down to P2
    lvl2 = create_model("test-efficientdet", tasks={"det": {}, "hm": {"type": "test_heatmap", "levels": [2]}})
    assert lvl2.min_level == 2 and set(lvl2.heads) == {"det", "hm"} and lvl2.heads["hm"].levels == (2,)
    # two instances of one type under different names
    two = create_model("test-efficientdet", tasks={"a": {"type": "test_heatmap"}, "b": {"type": "test_heatmap", "levels": [4]}})
    assert two.heads["a"].levels == (3,) and two.heads["b"].levels == (4,)
    with pytest.raises(ConfigError, match="task 'hm': unknown task type 'hm'.*--set hm.type=seg"):
        create_model("test-efficientdet", tasks=("hm",))
    with pytest.raises(ConfigError, match="unknown config key\\(s\\) hm.level; valid keys under hm: levels"):
        create_model("test-efficientdet", tasks={"hm": {"type": "test_heatmap", "level": 2}})


def test_a_head_without_levels_is_refused():
    @register_task("test_no_levels", override=True)
    class NoLevels(HeatmapTask):
        def build_head(self, in_channels, padding="pytorch"):
            return nn.Identity()

    try:
        with pytest.raises(ConfigError, match="head of task 'test_no_levels' must be an nn.Module with `levels`"):
            create_model("test-efficientdet", tasks=("test_no_levels",))
    finally:
        TASKS.unregister("test_no_levels")
