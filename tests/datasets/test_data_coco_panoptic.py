"""COCO panoptic readers against a small hand-written JSON + RGB PNGs."""
import json

import numpy as np
import pytest

from multitask_edet.datasets.coco_panoptic import (
    find_panoptic_layout,
    load_panoptic_sample,
    parse_categories,
    read_panoptic,
    rgb_to_segment_id,
    segment_id_to_rgb,
)
from multitask_edet.datasets.format_io import save_png
from multitask_edet.datasets.io import read_json
from multitask_edet.datasets.testing import save_image, truncate_file
from multitask_edet.errors import ConfigError, DatasetError

W, H = 10, 6
# JSON order (not id order) decides the classes: seg person 0, sky 1, car 2, tree 3; det person 0, car 1
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
    {"id": 119, "name": "sky-other-merged", "isthing": 0, "supercategory": "sky"},
    {"id": 3, "name": "car", "isthing": 1, "supercategory": "vehicle"},
    {"id": 184, "name": "tree-merged", "isthing": 0, "supercategory": "plant"},
]
SKY, PERSON, CAR, TREE = 2 * 65536, 5, 3 * 256 + 1, 77  # ids that use the B, R, G+R and R channels
IDS_A = np.zeros((H, W), np.int64)  # column 4 below the sky stays void (0)
IDS_A[:2] = SKY
IDS_A[2:, :4] = PERSON
IDS_A[2:, 5:] = CAR
SEGMENTS_A = [
    {"id": SKY, "category_id": 119, "iscrowd": 0, "bbox": [0, 0, 10, 2], "area": 20},
    {"id": PERSON, "category_id": 1, "iscrowd": 0, "bbox": [0, 2, 4, 4], "area": 16},
    {"id": CAR, "category_id": 3, "iscrowd": 1, "bbox": [5, 2, 5, 4], "area": 20},
]


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "coco"
    for name in ("a", "b", "c"):
        save_image(root / "val2017" / f"{name}.jpg", np.full((H, W, 3), 120, np.uint8))
    save_png(root / "annotations/panoptic_val2017/a.png", segment_id_to_rgb(IDS_A))
    save_png(root / "annotations/panoptic_val2017/c.png", segment_id_to_rgb(np.full((H, W), TREE)))
    data = {
        "images": [{"id": 7, "file_name": "c.jpg", "width": W, "height": H},
                   {"id": 1, "file_name": "a.jpg", "width": W, "height": H},
                   {"id": 2, "file_name": "b.jpg", "width": W, "height": H}],
        "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": SEGMENTS_A},
                        {"image_id": 7, "file_name": "c.png", "segments_info": [
                            {"id": TREE, "category_id": 184, "iscrowd": 0, "bbox": [0, 0, W, H], "area": W * H}]}],
        "categories": CATEGORIES,
    }  # fmt: skip
    (root / "annotations/panoptic_val2017.json").write_text(json.dumps(data))
    return root


def load_all(root, annotations=("det", "seg"), **kw):
    cats, items = read_panoptic(find_panoptic_layout(root, "val"))
    return {it.image_id: load_panoptic_sample(it, cats, annotations, **kw) for it in items}


def test_segment_ids_use_all_three_channels():
    rgb = segment_id_to_rgb(np.array([[SKY, PERSON, CAR, 0, 0xABCDEF]]))
    assert rgb.tolist() == [[[0, 0, 2], [5, 0, 0], [1, 3, 0], [0, 0, 0], [0xEF, 0xCD, 0xAB]]]
    assert rgb_to_segment_id(rgb).tolist() == [[SKY, PERSON, CAR, 0, 0xABCDEF]]


def test_classes_follow_the_json_category_order(tree):
    cats = parse_categories(read_json(tree / "annotations/panoptic_val2017.json"), "x.json")
    assert cats.seg_classes == ["person", "sky-other-merged", "car", "tree-merged"]
    assert cats.thing_classes == ["person", "car"] and cats.thing_ids == [1, 3]


def test_semantic_mask_void_and_crowd(tree):
    samples = load_all(tree)
    assert sorted(samples) == [1, 2, 7]
    expected = np.full((H, W), 255, np.uint8)  # void
    expected[:2] = 1  # sky
    expected[2:, :4] = 0  # person
    expected[2:, 5:] = 2  # car (crowd keeps its class by default)
    np.testing.assert_array_equal(samples[1]["seg"], expected)
    expected[2:, 5:] = 255
    np.testing.assert_array_equal(load_all(tree, seg_crowd="ignore")[1]["seg"], expected)
    np.testing.assert_array_equal(samples[7]["seg"], np.full((H, W), 3, np.uint8))
    with pytest.raises(ConfigError, match="seg_crowd="):
        load_all(tree, seg_crowd="drop")


def test_thing_boxes_with_crowd_as_ignore(tree):
    samples = load_all(tree)
    det = samples[1]["det"]
    np.testing.assert_array_equal(det["boxes"], [[0, 2, 4, 6], [5, 2, 10, 6]])
    assert det["labels"].tolist() == [0, 1] and det["ignore"].tolist() == [False, True]
    assert samples[7]["det"]["boxes"].shape == (0, 4)  # stuff only
    assert samples[1]["image_id"] == 1 and samples[1]["dataset"] == "coco-panoptic"
    assert "det" not in samples[2] and "seg" not in samples[2]  # no panoptic annotation for b.jpg


def test_png_folder_beside_the_images_and_below_a_data_root(tree):
    (tree / "annotations/panoptic_val2017").rename(tree / "panoptic_val2017")
    layout = find_panoptic_layout(tree.parent, "val")
    assert layout.png_dir == tree / "panoptic_val2017" and layout.img_dir == tree / "val2017"
    (tree / "panoptic_val2017").rename(tree / "elsewhere")
    with pytest.raises(DatasetError, match=r"found but not its PNG folder .*unzip annotations/panoptic_val2017\.zip"):
        find_panoptic_layout(tree, "val")
    with pytest.raises(DatasetError, match=r"looked for .*panoptic_train2017\.json"):
        find_panoptic_layout(tree, "train")


# --------------------------------------------------------------------- bad input names the file
def edit_json(tree, change):
    path = tree / "annotations/panoptic_val2017.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_unknown_category_and_bad_bbox_name_the_json(tree):
    edit_json(tree, lambda d: d["annotations"][0]["segments_info"][1].update(category_id=2))
    with pytest.raises(DatasetError, match=r"panoptic_val2017\.json: image a\.jpg: segment 5 has category_id 2"):
        load_all(tree)
    edit_json(tree, lambda d: d["annotations"][0]["segments_info"][1].update(category_id=1, bbox=[0, 2, 14, 4]))
    with pytest.raises(DatasetError, match=r"panoptic_val2017\.json: segment 5 of image a\.jpg .* outside its 10x6"):
        load_all(tree, ("det",))
    edit_json(tree, lambda d: d["annotations"][0]["segments_info"][1].update(bbox=[0, 2, 4]))
    with pytest.raises(DatasetError, match=r"segment 5 has bbox \[0, 2, 4\]"):
        load_all(tree)


def test_malformed_json_names_the_file(tree):
    truncate_file(tree / "annotations/panoptic_val2017.json")
    with pytest.raises(DatasetError, match=r"panoptic_val2017\.json is not valid JSON"):
        load_all(tree)
    (tree / "annotations/panoptic_val2017.json").write_text(json.dumps({"images": [], "categories": CATEGORIES}))
    with pytest.raises(DatasetError, match=r"panoptic_val2017\.json lacks the 'images' and 'annotations' lists"):
        load_all(tree)


def test_png_ids_and_segments_must_agree(tree):
    ids = IDS_A.copy()
    ids[0, 0] = 4242
    save_png(tree / "annotations/panoptic_val2017/a.png", segment_id_to_rgb(ids))
    with pytest.raises(DatasetError, match=r"panoptic PNG .*a\.png holds segment id\(s\) \[4242\]"):
        load_all(tree, ("seg",))
    ids = IDS_A.copy()
    ids[ids == PERSON] = 0
    save_png(tree / "annotations/panoptic_val2017/a.png", segment_id_to_rgb(ids))
    with pytest.raises(DatasetError, match=r"a\.png lacks segment id\(s\) \[5\] listed in segments_info"):
        load_all(tree, ("seg",))


def test_wrong_size_grey_and_missing_pngs_name_the_file(tree):
    png = tree / "annotations/panoptic_val2017/a.png"
    save_png(png, segment_id_to_rgb(np.zeros((H, W + 1), np.int64)))
    with pytest.raises(DatasetError, match=r"a\.png is 11x6 \(WxH\) but its image"):
        load_all(tree, ("seg",))
    save_png(png, np.zeros((H, W), np.uint8))
    with pytest.raises(DatasetError, match=r"panoptic PNG .*a\.png is a L image; expected an RGB PNG"):
        load_all(tree, ("seg",))
    png.unlink()
    with pytest.raises(DatasetError, match=r"panoptic PNG .*a\.png does not exist"):
        load_all(tree, ("seg",))
    save_image(tree / "val2017/c.jpg", np.zeros((H + 2, W, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"c\.jpg is 10x8 but .*panoptic_val2017\.json says 10x6"):
        load_all(tree, ("det",))


# --------------------------------------------------------------------- the registered adapter
def test_registered_adapter_and_its_box_ground_truth(tree):
    from multitask_edet.datasets import build_dataset

    ds = build_dataset("coco-panoptic", tree.parent, "val", "det,seg")
    assert ds.image_ids == [1, 2, 7] and ds.cat_ids == [1, 3]
    assert ds.class_names == {"det": ["person", "car"], "seg": ["person", "sky-other-merged", "car", "tree-merged"]}
    np.testing.assert_array_equal(ds.load_sample(0)["det"]["boxes"], [[0, 2, 4, 6], [5, 2, 10, 6]])
    gt = ds.box_gt().dataset
    assert [im["id"] for im in gt["images"]] == [1, 7]  # b.jpg has no panoptic annotation
    assert [(a["category_id"], a["bbox"], a["area"], a["iscrowd"]) for a in gt["annotations"]] == [
        (1, [0, 2, 4, 4], 16, 0), (3, [5, 2, 5, 4], 20, 1)]  # native ids, the segments' own areas
    dropped = build_dataset("coco-panoptic", tree, "val", "det", crowd="drop")
    assert dropped.load_sample(0)["det"]["labels"].tolist() == [0] and len(dropped.box_gt().dataset["annotations"]) == 1
    with pytest.raises(ConfigError, match="seg_crowd='drop'; valid values: class, ignore"):
        build_dataset("coco-panoptic", tree, "val", "seg", seg_crowd="drop")
