"""Experiment config: recipes, strict overrides, the paper's defaults, task sections."""
from __future__ import annotations

import pytest
import torch

from multitask_edet.engine.config import (
    ExperimentConfig, build_config, config_from_dict, default_recipe, list_recipes, load_recipe,
)  # fmt: skip
from multitask_edet.errors import ConfigError


def test_every_shipped_recipe_resolves_and_names_a_known_model():
    from multitask_edet.config import list_models

    names = list_recipes()
    for required in ["det-coco-d0", "det-coco-d7x", "det-voc-d0", "seg-voc-d4", "joint-voc-d0", "joint-coco-voc",
                     "bdd100k-d3", "bdd100k-d3-vehicle", "cityscapes-d4-seg", "coco-panoptic-joint-d0"]:
        assert required in names
    for n in names:
        cfg = build_config(n)
        assert cfg.model.name in list_models(), n
    assert [build_config(f"det-coco-d{k}").model.name for k in ("0", "3", "7x")] == [
        "efficientdet-d0", "efficientdet-d3", "efficientdet-d7x"]


def test_base_inheritance_merges_nested_keys():
    raw = load_recipe("det-coco-d7")
    assert "base" not in raw
    cfg = ExperimentConfig.from_dict(raw)
    assert cfg.train.epochs == 600 and cfg.train.batch_size == 2
    # inherited from det-coco-d0, not restated in det-coco-d7.yaml
    assert cfg.train.weight_decay == pytest.approx(4e-5) and cfg.data.dataset == "coco"
    assert cfg.task_config("det").postprocess.max_detections == 100
    assert cfg.task_config("det").repeats == 5 and cfg.task_config("det").anchor_scale == 5.0  # D7's head


def test_paper_recipe_defaults():
    cfg = build_config(None, tasks=["det"])
    t = cfg.train
    assert (cfg.model.name, cfg.data.dataset, cfg.data.val_split) == ("efficientdet-d0", "coco", "val")
    assert (t.optimizer, t.momentum, t.weight_decay, t.base_lr, t.base_batch) == ("sgd", 0.9, 4e-5, 0.16, 128)
    assert t.no_decay_bn_bias and t.ema and t.ema_decay == 0.9998 and t.clip_grad_norm
    seg = build_config(None, tasks=["seg"])
    assert (seg.model.name, seg.data.dataset, seg.data.train_split) == ("efficientdet-d4-seg", "voc2012", None)
    assert build_config(None, tasks=["det", "seg"]).tasks == ("det", "seg")


@pytest.mark.parametrize(
    "tasks, dataset, recipe",
    [(["det"], None, "det-coco-d0"), (["det"], "voc0712", "det-voc-d0"), (["det"], "voc2012", "det-coco-d0"), (["seg"], None, "seg-voc-d4"),
     (["det", "seg"], "voc2012", "joint-voc-d0"), (["det", "seg"], "coco+voc2012", "joint-coco-voc"),
     (["det", "drivable", "lane"], "bdd100k", "bdd100k-d3"), (["seg"], "cityscapes", "cityscapes-d4-seg"),
     (["det", "seg"], "coco-panoptic", "coco-panoptic-joint-d0")],
)  # fmt: skip
def test_default_recipe_per_task(tasks, dataset, recipe):
    assert default_recipe(tasks, dataset) == recipe


def test_multitask_recipes_name_their_heads_types_and_the_papers_protocols():
    cfg = build_config(None, tasks=["det", "drivable", "lane"], overrides={"data": {"dataset": "bdd100k"}})
    assert cfg.model.name == "efficientdet-d3-bdd" and tuple(cfg.model.image_size) == (384, 640)
    assert cfg.task_sections["drivable"]["type"] == cfg.task_sections["lane"]["type"] == "seg"
    lane, det = cfg.task_config("lane"), cfg.task_config("det")
    assert set(lane.loss.weights) == {"focal", "tversky"} and lane.eval.paper_class == "lane"
    assert det.eval.paper_protocol == "hybridnets" and det.repeats == 4  # D3's head depth from the variant
    assert cfg.data.options["lane_dilation"] == 3
    vehicle = build_config("bdd100k-d3-vehicle")
    assert vehicle.data.options == {**cfg.data.options, "class_map": "vehicle"} and vehicle.tasks == cfg.tasks
    city = build_config("cityscapes-d4-seg")
    assert (city.data.dataset, tuple(city.model.image_size), city.tasks) == ("cityscapes", (512, 1024), ("seg",))
    pan = build_config("coco-panoptic-joint-d0")
    assert (pan.data.dataset, pan.tasks) == ("coco-panoptic", ("det", "seg"))
    # one head of the recipe alone: the other heads' typed sections are left aside, an untyped one is an error
    lane_only = build_config("bdd100k-d3", tasks=["lane"])
    assert lane_only.tasks == ("lane",) and set(lane_only.task_sections) == {"lane"}
    assert build_config("bdd100k-d3", tasks=["det"]).task_sections.keys() == {"det"}
    with pytest.raises(ConfigError, match="unknown config key 'drivable'"):
        ExperimentConfig.from_dict({"tasks": ["det"], "drivable": {"num_classes": 2}})


def test_overrides_are_validated_and_layered():
    cfg = build_config("det-coco-d0", overrides={"train": {"epochs": 3}}, set_items=["train.epochs=5", "det.loss.gamma=2.0",
                                                                                      "train.amp=fp32"])
    det = cfg.task_config("det")
    assert cfg.train.epochs == 5 and det.loss.gamma == 2.0 and cfg.train.amp == "fp32"
    # a nested dict override keeps the recipe's sibling keys
    assert det.loss.alpha == 0.25 and det.postprocess.max_candidates == 5000
    # model and task keys are validated when the config is built, before any data is read
    with pytest.raises(ConfigError, match=r"model\.neck\.chanels; valid keys under model\.neck: channels"):
        build_config("det-coco-d0", set_items=["model.neck.chanels=8"])
    with pytest.raises(ConfigError, match=r"det\.loss\.gama; valid keys under det\.loss: alpha"):
        build_config("det-coco-d0", set_items=["det.loss.gama=2"])
    with pytest.raises(ConfigError, match="setting 'seg' names no section of the config and no task of this run"):
        build_config("det-coco-d0", set_items=["seg.flip_test=true"])
    with pytest.raises(ConfigError, match=r"train\.lrr.*valid keys under train: .*base_lr"):
        build_config("det-coco-d0", set_items=["train.lrr=1"])
    with pytest.raises(ConfigError, match="train.amp"):
        build_config("det-coco-d0", set_items=["train.amp=off"])  # YAML reads off as false
    with pytest.raises(ConfigError, match="train.batch_size must be >= 1"):
        build_config("det-coco-d0", set_items=["train.batch_size=0"])
    with pytest.raises(ConfigError, match="neither a file nor a shipped recipe; recipes: .*det-coco-d0"):
        build_config("no-such-recipe")


def test_config_round_trips_through_its_dict(tmp_path):
    cfg = build_config("joint-coco-voc", set_items=["model.image_size=[256, 384]", "train.freeze=[backbone]"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    f = tmp_path / "c.yaml"
    f.write_text(cfg.to_yaml())
    assert build_config(str(f)) == cfg
    assert cfg.model.image_size == (256, 384) and cfg.train.freeze == ["backbone"]


def test_recipe_file_with_base_relative_to_itself(tmp_path):
    (tmp_path / "a.yaml").write_text("base: det-coco-d0\ntrain: {epochs: 7}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain: {batch_size: 3}\n")
    cfg = build_config(str(tmp_path / "b.yaml"))
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.name) == (7, 3, "efficientdet-d0")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        build_config(str(tmp_path / "loop.yaml"))


def test_seg_trains_on_train_aug_when_sbd_is_present(tmp_path):
    from multitask_edet.datasets.testing import write_sbd_tree, write_voc_tree
    from multitask_edet.datasets import default_train_split

    tree = write_voc_tree(tmp_path)
    assert default_train_split("voc2012", tmp_path, ["seg"], {}) == "train"
    assert default_train_split("voc2012", tmp_path, ["det"], {}) == "train"
    write_sbd_tree(tmp_path, tree, fmt="aug")
    assert default_train_split("voc2012", tmp_path, ["seg"], {}) == "train_aug"
    assert default_train_split("voc2012", tmp_path, ["det", "seg"], {}) == "train_aug"
    assert default_train_split("voc0712", tmp_path, ["det"], {}) == "trainval"


def test_initial_weights_fine_tune_across_class_sets(tmp_path):
    """model.checkpoint_strict=false seeds a 5-class model from a 90-class detector."""
    from safetensors.torch import save_file

    from multitask_edet.engine.builders import build_model
    from multitask_edet.engine.config import config_from_dict
    from multitask_edet.models.factory import create_model

    src = create_model("test-efficientdet", tasks=("det",), det={"num_classes": 90})
    path = tmp_path / "coco.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    names = {"det": [f"c{i}" for i in range(5)]}
    cfg = config_from_dict({"model": {"name": "test-efficientdet", "checkpoint": str(path)}, "tasks": ["det"]})
    with pytest.raises(Exception, match="strict=False"):
        build_model(cfg, names)
    cfg = config_from_dict(
        {"model": {"name": "test-efficientdet", "checkpoint": str(path), "checkpoint_strict": False}, "tasks": ["det"]}
    )
    model = build_model(cfg, names)
    assert model.heads["det"].num_classes == 5
    key = "heads.det.box_net.predict.conv_pw.weight"
    assert torch.equal(model.state_dict()[key], src.state_dict()[key])
