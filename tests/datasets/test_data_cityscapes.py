"""Cityscapes readers against small hand-written labelIds / instanceIds PNGs."""
import numpy as np
import pytest

from multitask_edet.datasets.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_THINGS,
    LABELS,
    boxes_from_instance_ids,
    cityscapes_items,
    load_cityscapes_sample,
    train_id_of,
)
from multitask_edet.datasets.format_io import save_png
from multitask_edet.errors import ConfigError, DatasetError

W, H = 12, 8
T = CITYSCAPES_THINGS.index
CITY = "aachen"
NAME = f"{CITY}_000000_000019"

# label ids: sky above, road below, a car (26) and a person (24), an ego-vehicle row, a 255 pixel
LABEL_IDS = np.full((H, W), 7, np.uint8)
LABEL_IDS[:2] = 23
LABEL_IDS[2:5, 1:4] = 26
LABEL_IDS[2:6, 6:8] = 24
LABEL_IDS[7] = 1
LABEL_IDS[0, 0] = 0
LABEL_IDS[0, 11] = 255  # a license plate's -1 as an unsigned byte

# instances: car 26000 at (1,2)-(4,5); a second car 26001 in two visible parts; person 24000; two separate
# car groups (plain 26); a caravan instance 29000 (no train id: no box); stuff keeps its id
INSTANCE_IDS = LABEL_IDS.astype(np.uint16)
INSTANCE_IDS[2:5, 1:4] = 26000
INSTANCE_IDS[2:6, 6:8] = 24000
INSTANCE_IDS[6, 0:2] = 26001
INSTANCE_IDS[6, 4] = 26001
INSTANCE_IDS[0:2, 9:11] = 26
INSTANCE_IDS[5, 10:12] = 26
INSTANCE_IDS[3, 10] = 29000


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "cityscapes"
    for split, names in (("train", [NAME, f"{CITY}_000001_000019"]), ("val", ["frankfurt_000000_000294"])):
        for name in names:
            city = name.split("_")[0]
            save_png(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", np.full((H, W, 3), 70, np.uint8))
            save_png(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", LABEL_IDS)
            save_png(root / "gtFine" / split / city / f"{name}_gtFine_instanceIds.png", INSTANCE_IDS)
    return root


def test_label_table_facts():
    assert len(LABELS) == 35 and len(CITYSCAPES_CLASSES) == 19
    assert CITYSCAPES_CLASSES[:3] == ("road", "sidewalk", "building") and CITYSCAPES_CLASSES[-1] == "bicycle"
    assert CITYSCAPES_THINGS == ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
    assert train_id_of(-1) == 255  # license plate
    assert train_id_of(7) == 0 and train_id_of(33) == 18 and train_id_of(29) == 255 and train_id_of(0) == 255
    with pytest.raises(KeyError):
        train_id_of(34)


def test_semantic_mask_is_mapped_to_train_ids(tree):
    item = cityscapes_items(tree, "train")[0]
    s = load_cityscapes_sample(item, ("seg",), image_id=0)
    expected = np.full((H, W), 0, np.uint8)  # road
    expected[:2] = 10  # sky
    expected[2:5, 1:4] = 13  # car
    expected[2:6, 6:8] = 11  # person
    expected[7] = 255  # ego vehicle
    expected[0, 0] = 255  # unlabeled
    expected[0, 11] = 255  # license plate (-1 → 255)
    np.testing.assert_array_equal(s["seg"], expected)
    assert "det" not in s and s["file_name"].endswith(f"{NAME}_leftImg8bit.png") and s["dataset"] == "cityscapes"


def test_instance_boxes_and_group_regions(tree):
    s = load_cityscapes_sample(cityscapes_items(tree, "train")[0], ("det", "seg"), image_id=3)
    det = s["det"]
    # instances in id order: 24000, 26000, 26001 (extent of both parts); then the car groups, one box per component
    np.testing.assert_array_equal(
        det["boxes"], [[6, 2, 8, 6], [1, 2, 4, 5], [0, 6, 5, 7], [9, 0, 11, 2], [10, 5, 12, 6]]
    )
    assert det["labels"].tolist() == [T("person"), T("car"), T("car"), T("car"), T("car")]
    assert det["ignore"].tolist() == [False, False, False, True, True]
    assert s["image_id"] == 3 and "seg" in s
    dropped = boxes_from_instance_ids(INSTANCE_IDS, "x.png", crowd="drop")
    np.testing.assert_array_equal(dropped["boxes"], det["boxes"][:3])
    with pytest.raises(ConfigError, match="crowd="):
        boxes_from_instance_ids(INSTANCE_IDS, "x.png", crowd="class")


def test_image_without_things_has_zero_boxes():
    det = boxes_from_instance_ids(np.full((4, 4), 7, np.uint16), "x.png")
    assert det["boxes"].shape == (0, 4) and det["labels"].shape == (0,) and det["ignore"].shape == (0,)


def test_items_are_sorted_and_found_below_a_data_root(tree):
    items = cityscapes_items(tree.parent, "train")
    assert [it.name for it in items] == [NAME, f"{CITY}_000001_000019"]
    assert items[0].label_ids == tree / "gtFine/train" / CITY / f"{NAME}_gtFine_labelIds.png"
    assert [it.name for it in cityscapes_items(tree, "val")] == ["frankfurt_000000_000294"]
    with pytest.raises(ConfigError, match="valid splits"):
        cityscapes_items(tree, "trainval")


# --------------------------------------------------------------------- bad input names the file
def test_missing_layout_and_files_are_named(tree, tmp_path):
    with pytest.raises(DatasetError, match="no Cityscapes layout under"):
        cityscapes_items(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match=r"folder .*leftImg8bit/test does not exist"):
        cityscapes_items(tree, "test")
    save_png(tree / "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"folder .*gtFine/test does not exist"):
        cityscapes_items(tree, "test")
    item = cityscapes_items(tree, "train")[0]
    item.instance_ids.unlink()
    with pytest.raises(DatasetError, match=rf"instance image .*{NAME}_gtFine_instanceIds\.png does not exist"):
        load_cityscapes_sample(item, ("det",), image_id=0)


def test_out_of_range_ids_name_the_file(tree):
    item = cityscapes_items(tree, "train")[0]
    bad = LABEL_IDS.copy()
    bad[3, 3] = 40
    save_png(item.label_ids, bad)
    with pytest.raises(DatasetError, match=rf"{NAME}_gtFine_labelIds\.png holds value\(s\) \[40\]"):
        load_cityscapes_sample(item, ("seg",), image_id=0)
    for value in (7001, 50, 34000):  # road has no instances; 50 is no id; class 34 does not exist
        inst = INSTANCE_IDS.copy()
        inst[1, 1] = value
        save_png(item.instance_ids, inst)
        with pytest.raises(DatasetError, match=rf"{NAME}_gtFine_instanceIds\.png holds value\(s\) \[{value}\]"):
            load_cityscapes_sample(item, ("det",), image_id=0)


def test_wrong_size_and_colour_labels_name_the_file(tree):
    item = cityscapes_items(tree, "train")[0]
    save_png(item.label_ids, np.zeros((H, W + 2), np.uint8))
    with pytest.raises(DatasetError, match=r"labelIds\.png is 14x8 \(WxH\) but its image"):
        load_cityscapes_sample(item, ("seg",), image_id=0)
    save_png(item.label_ids, np.zeros((H, W, 3), np.uint8))  # a *_color.png by mistake
    with pytest.raises(DatasetError, match=r"labelIds\.png is a RGB image"):
        load_cityscapes_sample(item, ("seg",), image_id=0)
    save_png(item.instance_ids, np.zeros((H, W, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"instanceIds\.png is a RGB image"):
        load_cityscapes_sample(item, ("det",), image_id=0)
    with pytest.raises(ConfigError, match="choose among"):
        load_cityscapes_sample(item, ("lane",), image_id=0)


# --------------------------------------------------------------------- the registered adapter
def test_registered_adapter_and_its_box_ground_truth(tree):
    from multitask_edet.datasets import build_dataset

    ds = build_dataset("cityscapes", tree.parent, "train", "det,seg")
    assert len(ds) == 2 and ds.class_names == {"det": list(CITYSCAPES_THINGS), "seg": list(CITYSCAPES_CLASSES)}
    assert ds.cat_ids == [24, 25, 26, 27, 28, 31, 32, 33]  # label ids: results JSONs speak Cityscapes' ids
    s = ds.load_sample(1)
    assert s["image_id"] == 1 and s["det"]["ignore"].tolist() == [False, False, False, True, True]
    gt = ds.box_gt().dataset
    assert [im["id"] for im in gt["images"]] == [0, 1] and gt["images"][0]["height"] == H
    first = [a for a in gt["annotations"] if a["image_id"] == 0]
    assert [a["bbox"] for a in first] == [[6, 2, 2, 4], [1, 2, 3, 3], [0, 6, 5, 1], [9, 0, 2, 2], [10, 5, 2, 1]]
    assert [a["category_id"] for a in first] == [24, 26, 26, 26, 26] and [a["iscrowd"] for a in first] == [0, 0, 0, 1, 1]
    dropped = build_dataset("cityscapes", tree, "train", "det", crowd="drop").box_gt().dataset
    assert len(dropped["annotations"]) == 6 and not any(a["iscrowd"] for a in dropped["annotations"])
    with pytest.raises(ConfigError, match="crowd='class'; valid values: ignore, drop"):
        build_dataset("cityscapes", tree, "train", "det", crowd="class")


def test_registered_adapter_skips_a_broken_label_image(tree):
    from multitask_edet.datasets import build_dataset

    bad = tree / "gtFine/train/aachen/aachen_000000_000019_gtFine_instanceIds.png"
    save_png(bad, np.full((H, W, 3), 1, np.uint8))
    with pytest.raises(DatasetError, match="instanceIds.png is a RGB image"):
        build_dataset("cityscapes", tree, "train", "det").box_gt()
    ds = build_dataset("cityscapes", tree, "train", "det", on_error="skip")
    assert [im["id"] for im in ds.box_gt().dataset["images"]] == [1]
    assert ds[0]["image_id"] == 1 and "RGB image" in ds.skipped[0]["reason"]
