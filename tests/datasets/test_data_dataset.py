import numpy as np
import pytest
import torch

from multitask_edet.datasets import DATASETS, build_dataset, collate
from multitask_edet.datasets.dataset import select_annotations
from multitask_edet.datasets.io import read_split_list
from multitask_edet.datasets.testing import truncate_file
from multitask_edet.datasets.transforms import eval_transforms, train_transforms
from multitask_edet.errors import ConfigError, DatasetError


def test_registry_names_and_unknown_name():
    assert {"coco", "coco-format", "voc2012", "voc2007", "voc0712", "shapes"} <= set(DATASETS.names())
    with pytest.raises(ConfigError, match="unknown dataset 'kitti'.*voc2012"):
        build_dataset("kitti", "x", "train")


def test_unknown_option_lists_valid_ones(voc_tree):
    with pytest.raises(ConfigError, match="unknown option\\(s\\) dificult; valid options: .*difficult"):
        build_dataset("voc2012", voc_tree.root, "train", dificult="drop")
    with pytest.raises(ConfigError, match="on_error='ignore'; valid values: raise, skip"):
        build_dataset("voc2012", voc_tree.root, "train", on_error="ignore")


def test_default_root_from_environment(voc_tree, monkeypatch):
    monkeypatch.setenv("MTEDET_DATA", str(voc_tree.root))
    assert len(build_dataset("voc2012", None, "train")) == 4


def test_annotation_selection():
    available = {"det": "boxes", "seg": "mask"}
    assert select_annotations("seg, det", available, "voc") == {"seg": "mask", "det": "boxes"}
    with pytest.raises(ConfigError, match="has no 'lane' annotation; it supplies det \\(boxes\\), seg \\(mask\\)"):
        select_annotations(["det", "lane"], available, "voc")
    with pytest.raises(ConfigError, match="no annotation requested"):
        select_annotations([], available, "voc")


def test_skip_replaces_bad_samples_deterministically_and_records_them(voc_tree):
    truncate_file(voc_tree.voc_dir / "JPEGImages" / "2012_000002.jpg", 0.3)
    raising = build_dataset("voc2012", voc_tree.root, "train")
    with pytest.raises(DatasetError, match="2012_000002.jpg is corrupt"):
        raising[1]
    ds = build_dataset("voc2012", voc_tree.root, "train", on_error="skip")
    s = ds[1]
    assert s["file_name"].endswith("2012_000003.jpg")  # the next valid index stands in
    assert s["skipped"][0]["file"].endswith("2012_000002.jpg") and "corrupt" in s["skipped"][0]["reason"]
    assert [e["index"] for e in ds.skipped] == [1]
    assert "skipped" not in ds[2]
    ds[1]  # a known-bad index is not retried and not listed twice
    assert len(ds.skipped) == 1
    ds.transform = eval_transforms(64)
    assert ds[1]["meta"]["skipped"][0]["file"].endswith("2012_000002.jpg")
    # load_sample is the raw accessor: it always raises
    with pytest.raises(DatasetError):
        ds.load_sample(1)


def test_skip_when_everything_is_broken(voc_tree):
    for p in (voc_tree.voc_dir / "JPEGImages").glob("*.jpg"):
        truncate_file(p, 0.2)
    ds = build_dataset("voc2012", voc_tree.root, "val", on_error="skip")
    with pytest.raises(DatasetError, match="every sample failed"):
        ds[0]


def test_getitem_seeds_by_epoch_and_index(voc_tree):
    ds = build_dataset("voc2012", voc_tree.root, "train", ("det",), train_transforms(64), seed=1)
    a, b = ds[0], ds[0]
    assert torch.equal(a["image"], b["image"]) and a["meta"]["scale"] == b["meta"]["scale"]
    ds.set_epoch(1)
    c = ds[0]
    assert c["meta"]["scale"] != a["meta"]["scale"]
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["images"].shape == (4, 3, 64, 64) and batch["images"].dtype == torch.uint8
    assert len(batch["det"]) == 4 and batch["meta"][0]["image_id"] == 0


def test_split_lists_accept_deeplab_paths(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n\n2008_000001 -1\n")
    assert read_split_list(p) == ["2007_000032", "2008_000001"]


def test_raw_arrays_are_writable(voc_tree):
    s = build_dataset("voc2012", voc_tree.root, "train", ("det", "seg")).load_sample(0)
    s["image"][0, 0] = 1
    s["seg"][0, 0] = 1
    assert s["image"].dtype == np.uint8 and s["seg"].dtype == np.uint8


def test_exif_orientation_is_ignored_as_coco_does(tmp_path):
    from PIL import Image

    from multitask_edet.datasets.io import read_image

    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° CW to display"
    Image.fromarray(img).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (20, 40, 3) and out[:, :8].mean() > 240 and out[:, 12:].mean() < 15
