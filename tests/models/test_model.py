"""The assembled model over the tiny registered configs: shapes, gradients, layouts, compile."""
import pytest
import torch

from multitask_edet.errors import ConfigError
from multitask_edet.models import InputSizeError, MultiTaskEfficientDet, create_model

TINY = [
    ("test-efficientdet", {}),
    ("test-efficientdet-seg", {}),
    ("tf_test-efficientdet", {}),
    ("test-efficientdet-seg", {"neck": {"fusion": "softmax", "topology": "pan"}}),
    ("test-efficientdet", {"neck": {"fusion": "sum", "topology": "fpn", "max_level": 6}, "det": {"levels": (3, 4, 5, 6)}}),
]


def _check_outputs(model, out, batch, size):
    h, w = size
    assert set(out) == set(model.heads)
    if "det" in out:
        det = model.heads["det"]
        assert [tuple(t.shape) for t in out["det"]["cls"]] == [
            (batch, det.num_anchors * det.num_classes, h // 2**lv, w // 2**lv) for lv in det.levels
        ]
        assert [tuple(t.shape) for t in out["det"]["box"]] == [
            (batch, det.num_anchors * 4, h // 2**lv, w // 2**lv) for lv in det.levels
        ]
    if "seg" in out:
        assert tuple(out["seg"].shape) == (batch, model.heads["seg"].num_classes, h, w)


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    return [t for v in out for t in _flat(v)]


@pytest.mark.parametrize("name, overrides", TINY, ids=[f"{n}-{i}" for i, (n, _) in enumerate(TINY)])
def test_forward_backward_no_nan(name, overrides):
    model = create_model(name, **overrides)
    x = torch.randn(2, 3, 128, 256)
    out = model(x)
    _check_outputs(model, out, 2, (128, 256))
    loss = sum(t.float().square().mean() for t in _flat(out))
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("neck."))


def test_p2_model_with_det_and_seg_on_a_rectangular_input():
    model = create_model("test-efficientdet", tasks=("det", "seg"))
    assert (model.min_level, model.max_level) == (2, 7)
    out = model.eval()(torch.randn(1, 3, 256, 384))
    assert [t.shape[-2:] for t in out["det"]["cls"]] == [(256 // 2**lv, 384 // 2**lv) for lv in range(3, 8)]
    assert tuple(out["seg"].shape) == (1, 3, 256, 384)
    with pytest.raises(InputSizeError, match=r"input 250x384 is not divisible by 128 .*such as 256x384"):
        model(torch.randn(1, 3, 250, 384))
    assert issubclass(InputSizeError, ConfigError) and issubclass(InputSizeError, ValueError)


def test_levels_follow_the_heads():
    assert create_model("test-efficientdet").min_level == 3
    assert create_model("test-efficientdet", tasks=("seg",)).min_level == 2
    fixed = create_model("test-efficientdet", neck={"min_level": 2})
    assert fixed.min_level == 2 and fixed.heads["det"].levels == (3, 4, 5, 6, 7)


def test_head_on_a_level_outside_the_trunk_is_rejected():
    with pytest.raises(ConfigError, match="reads level"):
        create_model("test-efficientdet", det={"levels": (3, 4, 5, 6, 7, 8)})


def test_channels_last_gives_the_same_outputs():
    model = create_model("test-efficientdet-seg").eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = _flat(model(x))
        model_cl = model.to(memory_format=torch.channels_last)
        got = _flat(model_cl(x.contiguous(memory_format=torch.channels_last)))
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compiles_as_one_graph():
    """No data-dependent Python in forward: dynamo captures the whole model without breaks."""
    model = create_model("test-efficientdet-seg").eval()
    x = torch.randn(1, 3, 128, 128)
    # fullgraph=True turns any graph break into an error; the eager backend skips codegen
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        for a, b in zip(_flat(model(x)), _flat(compiled(x))):
            torch.testing.assert_close(a, b)


def test_constructor_checks_levels():
    from multitask_edet.models.backbone import Backbone
    from multitask_edet.models.bifpn import BiFPN
    from multitask_edet.models.heads import DetectionHead

    bb = Backbone("test_efficientnet", 3, 7, 16)
    neck = BiFPN(bb.levels, bb.channels, 16, 1)
    model = MultiTaskEfficientDet(bb, neck, {"det": DetectionHead(16, num_classes=2)})
    assert model._routes["det"] == (0, 1, 2, 3, 4)
    with pytest.raises(ConfigError, match="differ"):
        MultiTaskEfficientDet(bb, BiFPN((3, 4, 5), bb.channels[:3], 16, 1), {})
