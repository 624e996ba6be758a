"""The named variants are the paper's Table 1 / §5.2 networks, and effdet's for the same name."""
import pytest

from multitask_edet.config import get_model_config, list_models
from multitask_edet.tasks.base import resolve_task_config

VARIANTS = ["d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d7x"]


def head(cfg, task="det"):
    """The variant's options of its ``task`` head (task defaults ← the variant's)."""
    return resolve_task_config(task, {}, cfg.task_defaults)[1]


def test_registry_lists_every_variant():
    names = list_models()
    for v in VARIANTS:
        assert f"efficientdet-{v}" in names and f"tf_efficientdet-{v}" in names
    assert "efficientdet-d4-seg" in names and "test-efficientdet" in names


@pytest.mark.parametrize("v", VARIANTS)
def test_tf_variants_match_effdet_configs(v):
    ec = pytest.importorskip("effdet.config.model_config")
    ref = ec.get_efficientdet_config(f"tf_efficientdet_{v}")
    cfg = get_model_config(f"tf_efficientdet-{v}")
    assert cfg.backbone.name == ref.backbone_name
    assert tuple(cfg.image_size) == tuple(ref.image_size)
    assert (cfg.neck.channels, cfg.neck.repeats, head(cfg).repeats) == (
        ref.fpn_channels,
        ref.fpn_cell_repeats,
        ref.box_class_repeats,
    )
    assert cfg.neck.max_level == ref.max_level and head(cfg).levels == tuple(range(3, ref.max_level + 1))
    assert head(cfg).anchor_scale == ref.anchor_scale and head(cfg).num_classes == ref.num_classes
    assert cfg.neck.fusion == ("sum" if ref.fpn_name == "bifpn_sum" else "fast")
    assert cfg.neck.padding == "same" and cfg.backbone.drop_path_rate == ref.backbone_args["drop_path_rate"]


@pytest.mark.parametrize("v", ["d0", "d1", "d2", "d3"])
def test_pytorch_variants_match_effdet_configs(v):
    ec = pytest.importorskip("effdet.config.model_config")
    ref = ec.get_efficientdet_config(f"efficientdet_{v}")
    cfg = get_model_config(f"efficientdet-{v}")
    assert cfg.backbone.name == ref.backbone_name and ref.pad_type == "" and cfg.neck.padding == "pytorch"
    assert cfg.backbone.drop_path_rate == ref.backbone_args["drop_path_rate"]
    assert (cfg.neck.channels, cfg.neck.repeats, head(cfg).repeats) == (
        ref.fpn_channels,
        ref.fpn_cell_repeats,
        ref.box_class_repeats,
    )


def test_table1_by_hand():
    d7, d7x, d6 = (get_model_config(f"efficientdet-{v}") for v in ("d7", "d7x", "d6"))
    assert head(d7).anchor_scale == 5.0 and head(d6).anchor_scale == 4.0
    assert d7x.backbone.name == "efficientnet_b7" and head(d7x).levels == (3, 4, 5, 6, 7, 8)
    assert {c.neck.fusion for c in (d6, d7, d7x)} == {"sum"}
    assert get_model_config("efficientdet-d5").neck.fusion == "fast"


def test_segmentation_variant():
    cfg = get_model_config("efficientdet-d4-seg")
    assert cfg.backbone.name == "efficientnet_b4" and list(cfg.tasks) == ["seg"]
    assert (cfg.neck.channels, cfg.neck.repeats, cfg.neck.min_level, cfg.neck.max_level) == (128, 3, 2, 7)
    seg = head(cfg, "seg")
    assert (seg.channels, seg.repeats, seg.num_classes, seg.level) == (256, 3, 21, 2)
