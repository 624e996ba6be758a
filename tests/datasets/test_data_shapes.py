import json

import numpy as np
import pytest

from multitask_edet.datasets import build_dataset
from multitask_edet.datasets.sample import MANIFEST, SHAPE_CLASSES, ensure_shapes, shape_polygon, write_shapes
from multitask_edet.errors import DatasetError

SMALL = dict(num_train=12, num_val=6, image_size=96, seed=3)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("shapes"), **SMALL)


def tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_to_the_byte(shapes_dir, tmp_path):
    again = write_shapes(tmp_path / "again", **SMALL)
    a, b = tree_bytes(shapes_dir), tree_bytes(again)
    assert a.keys() == b.keys() and len(a) > 4 * (SMALL["num_train"] + SMALL["num_val"])
    assert all(a[k] == b[k] for k in a)
    other = tree_bytes(write_shapes(tmp_path / "other", **{**SMALL, "seed": 4}))
    assert other["VOC/JPEGImages/train_00000.jpg"] != a["VOC/JPEGImages/train_00000.jpg"]


def test_layouts_and_manifest(shapes_dir):
    m = json.loads((shapes_dir / MANIFEST).read_text())
    assert m["classes"] == list(SHAPE_CLASSES) and m["params"]["num_train"] == 12
    voc = shapes_dir / "VOC"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass"):
        assert len(list((voc / sub).iterdir())) == 18
    for kind in ("Main", "Segmentation"):
        assert len((voc / "ImageSets" / kind / "trainval.txt").read_text().split()) == 18
    data = json.loads((shapes_dir / "coco" / "annotations" / "instances_train.json").read_text())
    assert len(data["images"]) == 12 and [c["id"] for c in data["categories"]] == [1, 2, 3, 4, 5]
    assert all(isinstance(a["segmentation"], list) and len(a["segmentation"][0]) >= 6 for a in data["annotations"])


def test_both_adapters_read_the_same_scenes(shapes_dir):
    voc = build_dataset("shapes", shapes_dir, "val", ("det", "seg"))
    coco = build_dataset("shapes", shapes_dir, "val", ("det", "seg"), layout="coco")
    assert voc.class_names == coco.class_names == {"det": list(SHAPE_CLASSES), "seg": ["background", *SHAPE_CLASSES]}
    assert len(voc) == len(coco) == 6
    for i in range(6):
        v, c = voc.load_sample(i), coco.load_sample(i)
        np.testing.assert_array_equal(v["image"], c["image"])
        np.testing.assert_array_equal(v["det"]["boxes"], c["det"]["boxes"])
        assert v["det"]["labels"].tolist() == c["det"]["labels"].tolist() and 1 <= len(v["det"]["labels"]) <= 4
        known = v["seg"] != 255
        assert (v["seg"] == 255).any()  # VOC's void border
        np.testing.assert_array_equal(v["seg"][known], c["seg"][known])
    assert voc.box_gt().getCatIds() == [1, 2, 3, 4, 5]


def test_boxes_are_the_extents_of_the_outlines(shapes_dir):
    gt = build_dataset("shapes", shapes_dir, "train", layout="coco").box_gt()
    for ann in gt.dataset["annotations"]:
        ys, xs = np.nonzero(gt.annToMask(ann))
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]


def test_scenes_vary_and_use_every_class(tmp_path):
    ds = build_dataset("shapes", write_shapes(tmp_path, num_train=40, num_val=2, image_size=128), "train", "det,seg")
    labels = np.concatenate([ds.load_sample(i)["det"]["labels"] for i in range(len(ds))])
    assert set(labels.tolist()) == set(range(len(SHAPE_CLASSES)))
    sizes = {ds.load_sample(i)["orig_size"] for i in range(len(ds))}
    assert len(sizes) > 10 and all(96 <= min(s) and max(s) <= 128 for s in sizes)
    colours = [ds.load_sample(i)["image"].reshape(-1, 3).std(0).mean() for i in range(5)]
    assert min(colours) > 10  # textured, not flat


def test_shape_outlines():
    for kind in SHAPE_CLASSES:
        poly = shape_polygon(kind, 50, 50, 20, 0.3)
        assert np.abs(np.hypot(poly[:, 0] - 50, poly[:, 1] - 50)).max() <= 20 + 1e-6
    with pytest.raises(Exception, match="known shapes"):
        shape_polygon("hexagon", 0, 0, 1, 0)


def test_generated_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTEDET_CACHE", str(tmp_path / "cache"))
    d = ensure_shapes(None, num_train=4, num_val=2, image_size=64)
    assert d.parent == tmp_path / "cache" / "shapes" and (d / MANIFEST).is_file()
    stamp = (d / MANIFEST).stat().st_mtime_ns
    ds = build_dataset("shapes", None, "train", ("det",), num_train=4, num_val=2, image_size=64)
    assert len(ds) == 4 and (d / MANIFEST).stat().st_mtime_ns == stamp
    # a data root without a shapes folder falls back to the cache; one with it is used as is
    assert ensure_shapes(tmp_path / "data", num_train=4, num_val=2, image_size=64) == d
    own = write_shapes(tmp_path / "data" / "shapes", num_train=3, num_val=1, image_size=64)
    assert len(build_dataset("shapes", tmp_path / "data", "train")) == 3
    assert ensure_shapes(own) == own
    assert not [p for p in (tmp_path / "cache" / "shapes").iterdir() if p.name.startswith(".")]


def test_unknown_split(shapes_dir):
    with pytest.raises(DatasetError, match="train, val"):
        build_dataset("shapes", shapes_dir, "test")
