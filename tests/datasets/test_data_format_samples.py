"""The shapes scenes written in the BDD100K, Cityscapes and COCO panoptic layouts read back by the readers."""
import json

import numpy as np
import pytest
from PIL import Image

from multitask_edet.datasets import bdd100k as bdd
from multitask_edet.datasets import cityscapes as cs
from multitask_edet.datasets import coco_panoptic as pan
from multitask_edet.datasets.format_samples import (
    write_bdd100k_sample,
    write_cityscapes_sample,
    write_coco_panoptic_sample,
)
from multitask_edet.datasets.io import read_json
from multitask_edet.errors import ConfigError

ALL = ("det", "drivable", "lane")
SEED = 1  # at this seed one BDD100K image has only drivable squares: its frame has no "labels"


def bdd_samples(root, spec, split):
    layout = bdd.find_bdd100k_layout(root, split, ALL)
    spec.check_layout(layout.kind)
    return [bdd.load_bdd100k_sample(it, spec, ALL, i) for i, it in enumerate(bdd.bdd100k_items(layout, ALL))]


@pytest.fixture(scope="module")
def bdd_official(tmp_path_factory):
    return write_bdd100k_sample(tmp_path_factory.mktemp("bdd") / "bdd100k", 6, 3, seed=SEED, image_size=96)


def test_bdd100k_sample_has_the_released_layout_and_reads_back(bdd_official):
    frames = read_json(bdd_official / "labels/det_20/det_train.json")
    samples = bdd_samples(bdd_official, bdd.BddSpec(lane="category"), "train")
    assert len(frames) == len(samples) == 6 and len(bdd_samples(bdd_official, bdd.BddSpec(), "val")) == 3
    used = set()
    for frame, s in zip(frames, samples):
        assert s["image"].shape == (54, 96, 3)
        assert ("labels" in frame) == (len(s["det"]["labels"]) > 0)  # an image without objects has no "labels"
        used |= {bdd.BDD100K_DET_CLASSES[k] for k in s["det"]["labels"]}
        assert (s["lane"] > 0).any() and s["lane"].max() <= len(bdd.LANE_CATEGORIES)
        assert set(np.unique(s["drivable"])) <= {0, 1, 2}
    assert sum("labels" not in f for f in frames) >= 1 and used <= {"car", "traffic sign", "pedestrian", "bus"}
    assert any((s["drivable"] == 1).any() for s in samples)  # some direct area
    raw = np.asarray(Image.open(bdd_official / "labels/lane/masks/train" / f"{frames[0]['name'][:-4]}.png"))
    lane = raw[raw != bdd.LANE_BACKGROUND]
    assert lane.size and not (lane & (bdd.LANE_BACKGROUND_BIT | bdd.LANE_UNUSED_BITS)).any()


def test_bdd100k_repacked_sample_holds_the_same_scenes(bdd_official, tmp_path):
    repacked = write_bdd100k_sample(tmp_path / "repacked", 6, 3, seed=SEED, image_size=96, layout="repacked")
    assert (repacked / "det_annotations/train").is_dir() and (repacked / "images/train").is_dir()
    spec = bdd.BddSpec(drivable="binary")
    for a, b in zip(bdd_samples(bdd_official, spec, "val"), bdd_samples(repacked, spec, "val")):
        for key in ("boxes", "labels", "ignore"):
            np.testing.assert_array_equal(a["det"][key], b["det"][key])
        np.testing.assert_array_equal(a["drivable"], b["drivable"])
        np.testing.assert_array_equal(a["lane"], b["lane"])
    names = {o["category"] for p in (repacked / "det_annotations/train").glob("*.json")
             for o in json.loads(p.read_text())["frames"][0]["objects"]}  # fmt: skip
    assert "person" in names and "pedestrian" not in names  # the 2018 per-image names


def test_writers_are_deterministic(tmp_path):
    for writer in (write_bdd100k_sample, write_cityscapes_sample, write_coco_panoptic_sample):
        name = writer.__name__
        a, b, c = (writer(tmp_path / d / name, 2, 1, seed=seed) for d, seed in (("a", 3), ("b", 3), ("c", 4)))
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
        images = [f for f in files if f.suffix == ".jpg" or f.name.endswith("_leftImg8bit.png")]
        assert all(not (c / f).is_file() or (c / f).read_bytes() != (a / f).read_bytes() for f in images)


def test_cityscapes_sample_reads_back_with_instances_groups_and_void(tmp_path):
    root = write_cityscapes_sample(tmp_path / "cityscapes", 6, 3, seed=SEED, image_size=96)
    groups = 0
    for split, n in (("train", 6), ("val", 3)):
        items = cs.cityscapes_items(root, split)
        assert len(items) == n and all(it.name.startswith("shapestown_") for it in items)
        for i, it in enumerate(items):
            s = cs.load_cityscapes_sample(it, ("det", "seg"), i)
            seg, det = s["seg"], s["det"]
            assert s["image"].shape == (48, 96, 3) and (seg[-1] == 255).all()  # ego vehicle row
            assert set(np.unique(seg)) <= {0, 2, 7, 10, 11, 13, 18, 255}
            for (x0, y0, x1, y1), label, ign in zip(det["boxes"].astype(int), det["labels"], det["ignore"]):
                train_id = cs.CITYSCAPES_CLASSES.index(cs.CITYSCAPES_THINGS[label])
                assert (seg[y0:y1, x0:x1] == train_id).any()
                groups += int(ign)
    assert groups >= 1


def test_coco_panoptic_sample_reads_back_with_void_and_crowd(tmp_path):
    root = write_coco_panoptic_sample(tmp_path / "coco", 6, 3, seed=SEED, image_size=96)
    layout = pan.find_panoptic_layout(root, "train")
    assert layout.png_dir == root / "annotations/panoptic_train2017"
    cats, items = pan.read_panoptic(layout)
    assert cats.thing_classes == ["circle", "triangle", "star", "cross"] and len(cats.seg_classes) == 6
    crowd = 0
    for it in items:
        s = pan.load_panoptic_sample(it, cats, ("det", "seg"))
        seg, det = s["seg"], s["det"]
        assert (seg == 255).any() and (seg == 5).any()  # void outlines, background stuff
        for (x0, y0, x1, y1), label, ign in zip(det["boxes"].astype(int), det["labels"], det["ignore"]):
            assert (seg[y0:y1, x0:x1] == label).any()  # things are the first four categories
            crowd += int(ign)
    assert crowd >= 1
    assert max(seg["id"] for it in items for seg in it.segments) > 65535  # B channel used


@pytest.mark.parametrize(
    "call, match",
    [(lambda p: write_bdd100k_sample(p, layout="yolop"), "layout="),
     (lambda p: write_cityscapes_sample(p, -1), "counts"),
     (lambda p: write_coco_panoptic_sample(p, image_size=16), "image_size")],
)  # fmt: skip
def test_bad_arguments_are_config_errors(tmp_path, call, match):
    with pytest.raises(ConfigError, match=match):
        call(tmp_path)
