import json
import logging

import numpy as np
import pytest

from multitask_edet.datasets import build_dataset
from multitask_edet.datasets.coco import CocoDataset
from multitask_edet.datasets.testing import H, W, truncate_file, write_coco_tree
from multitask_edet.datasets.voc import VOC_CLASSES
from multitask_edet.errors import DatasetError


def rect(m, x0, y0, x1, y1, v):
    m[y0:y1, x0:x1] = v
    return m


def by_id(ds, image_id):
    return ds.load_sample(ds.image_ids.index(image_id))


def test_category_gaps_map_to_contiguous_labels_and_back(coco_tree):
    ds = build_dataset("coco", coco_tree.root, "val")
    assert ds.class_names["det"] == ["person", "car", "train", "bench", "dog"]
    assert ds.class_names["seg"][0] == "background" and ds.class_names["seg"][1:] == ds.class_names["det"]
    assert ds.cat_ids == [1, 3, 7, 15, 18]
    assert ds.image_ids == [1, 2, 5, 7]


def test_boxes_and_zero_size_box_dropped_with_log(coco_tree, caplog):
    with caplog.at_level(logging.INFO):
        ds = CocoDataset(coco_tree.ann_file, coco_tree.img_dir, ("det",))
    assert "dropped 1 boxes" in caplog.text
    s = by_id(ds, 1)
    np.testing.assert_array_equal(s["det"]["boxes"], [[8, 8, 40, 40], [24, 16, 56, 32]])
    assert s["det"]["labels"].tolist() == [0, 1] and s["det"]["labels"].dtype == np.int64
    assert s["det"]["ignore"].tolist() == [False, False]
    assert s["image"].shape == (H, W, 3) and s["orig_size"] == (H, W)
    assert "seg" not in s


def test_crowd_object_is_an_ignore_box(coco_tree):
    s = by_id(build_dataset("coco", coco_tree.root, "val"), 2)
    np.testing.assert_array_equal(s["det"]["boxes"], [[4, 4, 20, 12], [30, 20, 60, 44], [10, 30, 20, 40], [40, 24, 48, 32]])
    assert s["det"]["labels"].tolist() == [1, 0, 3, 4]
    assert s["det"]["ignore"].tolist() == [False, True, False, False]
    dropped = by_id(build_dataset("coco", coco_tree.root, "val", crowd="drop"), 2)
    assert dropped["det"]["labels"].tolist() == [1, 3, 4]


def test_empty_images_kept_unless_drop_empty(coco_tree):
    ds = build_dataset("coco", coco_tree.root, "val")
    s = by_id(ds, 5)
    assert s["det"]["boxes"].shape == (0, 4) and s["det"]["labels"].shape == (0,)
    assert build_dataset("coco", coco_tree.root, "val", drop_empty=True).image_ids == [1, 2, 7]
    # an all-background mask is segmentation data: drop_empty does not apply with seg
    assert build_dataset("coco", coco_tree.root, "val", ("det", "seg"), drop_empty=True).image_ids == [1, 2, 5, 7]
    # evaluation GT always holds every image of the split
    assert sorted(ds.box_gt().getImgIds()) == [1, 2, 5, 7]


def test_semantic_mask_overlap_order_polygons_and_rle(coco_tree):
    ds = build_dataset("coco", coco_tree.root, "val", ("det", "seg"))
    m1 = by_id(ds, 1)["seg"]
    exp = rect(np.zeros((H, W), np.uint8), 8, 8, 40, 40, 1)
    rect(exp, 24, 16, 56, 32, 2)  # the smaller car lies on top of the person
    np.testing.assert_array_equal(m1, exp)
    s2 = by_id(ds, 2)
    exp = np.zeros((H, W), np.uint8)
    rect(exp, 30, 20, 60, 44, 255)  # crowd (uncompressed RLE) → ignore
    rect(exp, 4, 4, 20, 12, 2)  # compressed RLE
    rect(exp, 10, 30, 20, 40, 4)
    rect(exp, 40, 24, 48, 32, 5)  # an instance inside the crowd keeps its class
    np.testing.assert_array_equal(s2["seg"], exp)
    assert "det" in s2  # joint sample: boxes and mask
    exp7 = rect(rect(np.zeros((H, W), np.uint8), 2, 2, 10, 10, 3), 20, 20, 30, 30, 3)
    np.testing.assert_array_equal(by_id(ds, 7)["seg"], exp7)
    assert not by_id(ds, 5)["seg"].any()


def test_seg_only_sample_has_no_det_keys_and_crowd_as_class(coco_tree):
    ds = build_dataset("coco", coco_tree.root, "val", ("seg",), seg_crowd="class")
    s = by_id(ds, 2)
    assert "det" not in s
    exp = np.zeros((H, W), np.uint8)
    rect(exp, 30, 20, 60, 44, 1)  # painted as person
    rect(exp, 4, 4, 20, 12, 2)
    rect(exp, 10, 30, 20, 40, 4)
    rect(exp, 40, 24, 48, 32, 5)
    np.testing.assert_array_equal(s["seg"], exp)


def test_coco_to_voc_mapping(tmp_path):
    tree = write_coco_tree(tmp_path, all_categories=True)
    full = build_dataset("coco", tmp_path, "val")
    assert len(full.class_names["det"]) == 80 and full.cat_ids[:3] == [1, 2, 3] and full.cat_ids[-1] == 90
    ds = CocoDataset(tree.ann_file, tree.img_dir, ("det", "seg"), voc_classes=True)
    assert ds.class_names["det"] == list(VOC_CLASSES)
    assert ds.cat_ids[VOC_CLASSES.index("person")] == 1
    assert ds.cat_ids[VOC_CLASSES.index("sofa")] == 63  # couch
    assert ds.cat_ids[VOC_CLASSES.index("tvmonitor")] == 72  # tv
    s = by_id(ds, 2)
    # the bench (not a VOC class) is dropped from the boxes and painted as background
    assert s["det"]["labels"].tolist() == [VOC_CLASSES.index("car"), VOC_CLASSES.index("person"), VOC_CLASSES.index("dog")]
    assert s["det"]["ignore"].tolist() == [False, True, False]
    exp = np.zeros((H, W), np.uint8)
    rect(exp, 30, 20, 60, 44, 255)
    rect(exp, 4, 4, 20, 12, VOC_CLASSES.index("car") + 1)
    rect(exp, 40, 24, 48, 32, VOC_CLASSES.index("dog") + 1)
    np.testing.assert_array_equal(s["seg"], exp)
    gt = ds.box_gt()
    assert sorted(gt.getCatIds()) == sorted(ds.cat_ids)
    assert all(a["category_id"] != 15 for a in gt.dataset["annotations"])


def test_voc_mapping_needs_coco_names(coco_tree):
    with pytest.raises(DatasetError, match="aeroplane"):
        CocoDataset(coco_tree.ann_file, coco_tree.img_dir, voc_classes=True)


def test_box_gt_is_the_split_with_native_ids(coco_tree):
    gt = build_dataset("coco", coco_tree.root, "val").box_gt()
    assert sorted(gt.getCatIds()) == [1, 3, 7, 15, 18]
    assert len(gt.getAnnIds()) == 8
    assert gt.anns[21]["iscrowd"] == 1


def test_explicit_files_and_coco_format(coco_tree, tmp_path):
    a = build_dataset("coco", tmp_path, "val", ann_file=coco_tree.ann_file, img_dir=coco_tree.img_dir)
    b = build_dataset(
        "coco-format", coco_tree.root, "val", ann_file="annotations/instances_{split}2017.json", img_dir="{split}2017"
    )
    assert a.image_ids == b.image_ids == [1, 2, 5, 7]
    assert b.name == "coco-format"
    np.testing.assert_array_equal(a.load_sample(0)["det"]["boxes"], b.load_sample(0)["det"]["boxes"])


# ----------------------------------------------------------------- bad input
def _edit(tree, fn):
    data = json.loads(tree.ann_file.read_text())
    fn(data)
    tree.ann_file.write_text(json.dumps(data))


def test_missing_root_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetError, match="looked for.*instances_val2017.json.*MTEDET_DATA"):
        build_dataset("coco", tmp_path / "nowhere", "val")


def test_truncated_json_names_file(coco_tree):
    truncate_file(coco_tree.ann_file)
    with pytest.raises(DatasetError, match=f"{coco_tree.ann_file}.*not valid JSON"):
        build_dataset("coco", coco_tree.root, "val")


def test_missing_and_corrupt_image_name_file(coco_tree):
    (coco_tree.img_dir / "a.jpg").unlink()
    truncate_file(coco_tree.img_dir / "b.jpg", 0.3)
    ds = build_dataset("coco", coco_tree.root, "val")
    with pytest.raises(DatasetError, match="a.jpg does not exist"):
        ds.load_sample(0)
    with pytest.raises(DatasetError, match="b.jpg is corrupt or truncated"):
        ds.load_sample(1)


def test_box_outside_image_names_file_and_box(coco_tree):
    _edit(coco_tree, lambda d: d["annotations"][1].update(bbox=[50.0, 16.0, 30.0, 16.0]))
    ds = build_dataset("coco", coco_tree.root, "val")
    with pytest.raises(DatasetError, match=r"instances_val2017.json: annotation 11 of image a.jpg.*\[50.0, 16.0, 30.0"):
        ds.load_sample(0)
    ds.load_sample(1)  # other images still load


def test_unknown_category_names_file(coco_tree):
    _edit(coco_tree, lambda d: d["annotations"][0].update(category_id=99))
    ds = build_dataset("coco", coco_tree.root, "val", ("seg",))
    with pytest.raises(DatasetError, match="instances_val2017.json: annotation 10 .*category_id 99"):
        ds.load_sample(0)


def test_image_size_disagreeing_with_json(coco_tree):
    _edit(coco_tree, lambda d: d["images"][0].update(width=65))
    with pytest.raises(DatasetError, match="a.jpg is 64x48 but .* says 65x48"):
        build_dataset("coco", coco_tree.root, "val").load_sample(0)


def test_rle_of_wrong_size(coco_tree):
    _edit(coco_tree, lambda d: d["annotations"][3]["segmentation"].update(size=[10, 10]))
    with pytest.raises(DatasetError, match="annotation 20 .*RLE size"):
        build_dataset("coco", coco_tree.root, "val", ("seg",)).load_sample(1)
