"""Parameters and GMACs of the named models against the paper's Table 2."""
import json

import pytest

from multitask_edet.models import create_model
from multitask_edet.models.info import model_info

# paper Table 2: params (M), FLOPs (B multiply-adds), 90 classes, native size
PAPER = {
    "d0": (3.9, 2.5),
    "d1": (6.6, 6.1),
    "d2": (8.1, 11),
    "d3": (12, 25),
    "d4": (21, 55),
    "d5": (34, 135),
    "d6": (52, 226),
    "d7": (52, 325),
    "d7x": (77, 410),
}


@pytest.mark.parametrize("v", list(PAPER))
def test_detectors_match_table2(v):
    info = model_info(f"efficientdet-{v}", tasks=("det",))  # meta device: ~1 s even for D7x
    params, gmacs = PAPER[v]
    assert info["params"] / 1e6 == pytest.approx(params, rel=0.02)
    assert info["gmacs"] == pytest.approx(gmacs, rel=0.03)
    assert info["num_classes"] == {"det": 90}
    assert sum(info["params_per_part"].values()) == info["params"]
    json.dumps(info)


def test_segmentation_model_matches_section_5_2():
    info = model_info("efficientdet-d4-seg", tasks="seg", num_classes=21, image_size=640)
    assert info["params"] / 1e6 == pytest.approx(17, rel=0.06)
    assert info["gmacs"] == pytest.approx(18, rel=0.06)
    assert info["levels"] == [2, 7] and info["image_size"] == [640, 640]


def test_info_of_a_built_model_equals_info_by_name():
    by_name = model_info("test-efficientdet", tasks="det,seg", image_size=(128, 256))
    model = create_model("test-efficientdet", tasks=("det", "seg"))
    built = model_info(model, image_size=(128, 256))
    assert built == by_name
    assert set(built["params_per_part"]) == {"backbone", "neck", "head.det", "head.seg"}
    # twice the pixels ≈ twice the multiply-adds (all convolutions)
    assert model_info(model, image_size=(128, 128))["gmacs"] == pytest.approx(built["gmacs"] / 2, rel=1e-3)  # SE convs run on 1×1 maps
    assert model.training  # measuring does not leave the model in eval mode


def test_bdd100k_variant_beside_hybridnets(capsys):
    from multitask_edet.cli import main

    info = model_info("efficientdet-d3-bdd")
    assert info["tasks"] == ["det", "drivable", "lane"] and info["levels"] == [2, 7]
    assert info["num_classes"] == {"det": 10, "drivable": 2, "lane": 2} and info["image_size"] == [384, 640]
    hybridnets = info["published"][0]
    assert (hybridnets["model"], hybridnets["params"]) == ("HybridNets", 12.83e6)
    assert info["params"] == pytest.approx(hybridnets["params"], rel=0.06)  # same backbone and BiFPN width
    assert main(["info", "efficientdet-d3-bdd"]) == 0
    out = capsys.readouterr().out
    assert f"parameters {info['params'] / 1e6:.3f}M" in out
    assert "published: HybridNets 12.830M params" in out and f"{info['params'] / 12.83e6:.2f}x its parameters" in out
    assert model_info("efficientdet-d0")["published"][0]["params"] == 3.9e6
    assert model_info("test-efficientdet")["published"] == []
