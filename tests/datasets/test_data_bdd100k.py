"""BDD100K readers against small hand-written files in the released and re-packed layouts."""
import json

import numpy as np
import pytest

from multitask_edet.datasets.bdd100k import (
    BDD100K_DET_CLASSES,
    LANE_BACKGROUND,
    BddSpec,
    bdd100k_items,
    decode_lane_mask,
    encode_lane,
    find_bdd100k_layout,
    load_bdd100k_sample,
)
from multitask_edet.datasets.format_io import save_png
from multitask_edet.datasets.testing import save_image, truncate_file
from multitask_edet.errors import ConfigError, DatasetError

W, H = 16, 8
L = BDD100K_DET_CLASSES.index
ALL = ("det", "drivable", "lane")

# a.jpg: every kind of label; b.jpg: no "labels" key; c.jpg: "labels": null
FRAMES = [
    {
        "name": "a.jpg",
        "attributes": {"weather": "clear"},
        "labels": [
            {"id": "1", "category": "car", "attributes": {"occluded": False}, "box2d": {"x1": 1, "y1": 2, "x2": 5, "y2": 6}},
            {"id": "2", "category": "person", "box2d": {"x1": 0.5, "y1": 0, "x2": 3.5, "y2": 7}},
            {"id": "3", "category": "other vehicle", "box2d": {"x1": 8, "y1": 1, "x2": 12, "y2": 4}},
            {"id": "4", "category": "traffic light", "attributes": {"crowd": True},
             "box2d": {"x1": 10, "y1": 0, "x2": 15, "y2": 7}},
            {"id": "5", "category": "area/drivable", "poly2d": [{"vertices": [[0, 0], [4, 0], [4, 4]], "types": "LLL"}]},
            {"id": "6", "category": "bike", "attributes": {"ignored": True}, "box2d": {"x1": 2, "y1": 2, "x2": 3, "y2": 3}},
        ],
    },
    {"name": "b.jpg", "attributes": {}},
    {"name": "c.jpg", "labels": None},
]  # fmt: skip

DRIVABLE = np.full((H, W), 2, np.uint8)
DRIVABLE[4:, :8] = 0  # direct
DRIVABLE[4:, 8:12] = 1  # alternative

SINGLE_OTHER_DASHED_VERTICAL = 0b0011_0101  # direction 1, style 1, background 0, category 5
ROAD_CURB = 0b0000_0100  # category 4, solid, parallel
LANES = np.full((H, W), LANE_BACKGROUND, np.uint8)
LANES[0, :] = SINGLE_OTHER_DASHED_VERTICAL
LANES[7, 3] = ROAD_CURB
LANES[5, 5] = 0b0000_1101  # background flag set: not a lane, whatever the other bits say
LANES[6, 10] = 0  # crosswalk, solid, parallel: a lane pixel whose byte is 0


@pytest.fixture
def official(tmp_path):
    root = tmp_path / "bdd100k"
    for stem in ("a", "b", "c", "d"):
        save_image(root / "images/100k/val" / f"{stem}.jpg", np.full((H, W, 3), 100, np.uint8))
    det = root / "labels/det_20/det_val.json"
    det.parent.mkdir(parents=True)
    det.write_text(json.dumps(FRAMES))
    for stem in ("a", "b", "d"):  # c has no masks, d has no det frame
        save_png(root / "labels/drivable/masks/val" / f"{stem}.png", DRIVABLE)
        save_png(root / "labels/lane/masks/val" / f"{stem}.png", LANES)
    return root


def load(root, spec=None, annotations=ALL, split="val"):
    layout = find_bdd100k_layout(root, split, annotations)
    items = bdd100k_items(layout, annotations)
    return {it.name: load_bdd100k_sample(it, spec or BddSpec(), annotations, i) for i, it in enumerate(items)}


def test_det_boxes_classes_and_ignore(official):
    s = load(official)["a"]
    det = s["det"]
    # box2d includes its last pixel: (x1, y1, x2 + 1, y2 + 1); "person" → pedestrian; "other vehicle" → ignored car;
    # crowd and ignored attributes → ignore; the poly2d label has no box; boxes clipped to the 16x8 image
    np.testing.assert_array_equal(
        det["boxes"], [[1, 2, 6, 7], [0.5, 0, 4.5, 8], [8, 1, 13, 5], [10, 0, 16, 8], [2, 2, 4, 4]]
    )
    assert det["boxes"].dtype == np.float32 and det["labels"].dtype == np.int64
    assert det["labels"].tolist() == [L("car"), L("pedestrian"), L("car"), L("traffic light"), L("bicycle")]
    assert det["ignore"].tolist() == [False, False, True, True, True]
    assert s["image"].shape == (H, W, 3) and s["orig_size"] == (H, W) and s["dataset"] == "bdd100k"


def test_frames_without_labels_have_zero_boxes_and_sources_are_unioned(official):
    samples = load(official)
    assert list(samples) == ["a", "b", "c", "d"]
    assert [samples[k]["image_id"] for k in "abcd"] == [0, 1, 2, 3]
    for k in "bc":  # no "labels" key / "labels": null → an image without objects, not an unlabelled one
        assert samples[k]["det"]["boxes"].shape == (0, 4) and samples[k]["det"]["labels"].shape == (0,)
    assert "drivable" not in samples["c"] and "lane" not in samples["c"]
    assert "det" not in samples["d"] and "drivable" in samples["d"]


def test_drivable_class_sets(official):
    expected = np.zeros((H, W), np.uint8)
    expected[4:, :8] = 1
    expected[4:, 8:12] = 2
    np.testing.assert_array_equal(load(official, annotations=("drivable",))["a"]["drivable"], expected)
    binary = load(official, BddSpec(drivable="binary"), annotations=("drivable",))["a"]["drivable"]
    np.testing.assert_array_equal(binary, (expected > 0).astype(np.uint8))
    assert BddSpec().class_names()["drivable"] == ["background", "direct", "alternative"]
    assert BddSpec(drivable="binary").class_names()["drivable"] == ["background", "drivable"]


def test_lane_bits_binary_and_category(official):
    expected = np.zeros((H, W), np.uint8)
    expected[0, :] = 1 + 5  # single other
    expected[7, 3] = 1 + 4  # road curb
    expected[6, 10] = 1 + 0  # crosswalk; (5, 5) has the background flag → 0
    cat = load(official, BddSpec(lane="category"), annotations=("lane",))["a"]["lane"]
    np.testing.assert_array_equal(cat, expected)
    binary = load(official, annotations=("lane",))["a"]["lane"]
    np.testing.assert_array_equal(binary, (expected > 0).astype(np.uint8))
    assert BddSpec(lane="category").class_names()["lane"][1:3] == ["crosswalk", "double other"]


def test_encode_lane_matches_the_toolkit_bit_layout():
    assert encode_lane("single other", "vertical", "dashed") == SINGLE_OTHER_DASHED_VERTICAL
    assert encode_lane("road curb") == ROAD_CURB
    assert encode_lane("single yellow", "parallel", "dashed") == 0b0001_0111
    with pytest.raises(ConfigError, match="categories"):
        encode_lane("zebra")


def test_lane_dilation_widens_lines_and_higher_category_wins():
    raw = np.full((7, 7), LANE_BACKGROUND, np.uint8)
    raw[3, 3] = encode_lane("crosswalk")
    out = decode_lane_mask(raw, "binary", "x.png", dilation=1)
    cross = np.zeros((7, 7), np.uint8)
    cross[2:5, 3] = cross[3, 2:5] = 1  # the 3x3 ellipse is a plus
    np.testing.assert_array_equal(out, cross)
    assert decode_lane_mask(raw, "binary", "x.png", dilation=2).sum() > out.sum()
    raw[3, 5] = encode_lane("double white")
    cat = decode_lane_mask(raw, "category", "x.png", dilation=1)
    assert cat[3, 4] == 1 + 2  # reached by both lines: double white (2) beats crosswalk (0)
    assert cat[3, 2] == 1 and cat[3, 6] == 3


def test_class_map_merges_into_vehicle_and_drops_the_rest(official):
    from multitask_edet.datasets.class_map import BDD100K_VEHICLE

    spec = BddSpec(class_map=BDD100K_VEHICLE, unmapped="drop")
    assert spec.class_names()["det"] == ["vehicle"]
    det = load(official, spec, annotations=("det",))["a"]["det"]
    np.testing.assert_array_equal(det["boxes"], [[1, 2, 6, 7], [8, 1, 13, 5]])
    assert det["labels"].tolist() == [0, 0] and det["ignore"].tolist() == [False, True]


def test_class_map_must_say_what_becomes_of_every_class():
    with pytest.raises(ConfigError, match="does not say what becomes of"):
        BddSpec(class_map={"car": "vehicle"})
    with pytest.raises(ConfigError, match="unknown source class"):
        BddSpec(class_map={"van": "vehicle"}, unmapped="drop")
    spec = BddSpec(class_map={c: ("vehicle" if c in ("bus", "car") else "other") for c in BDD100K_DET_CLASSES})
    assert spec.class_names()["det"] == ["other", "vehicle"]  # ordered by first source class (pedestrian)
    assert spec.classes.lut[L("car")] == 1 and spec.classes.lut[L("rider")] == 0
    with pytest.raises(ConfigError, match="keep at least one"):
        BddSpec(class_map={c: None for c in BDD100K_DET_CLASSES})


@pytest.mark.parametrize(
    "kwargs, match",
    [({"drivable": "3class"}, "drivable="), ({"lane": "multi"}, "lane="), ({"lane_dilation": -1}, "lane_dilation"),
     ({"unmapped": "keep"}, "unmapped")],
)  # fmt: skip
def test_bad_options_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BddSpec(**kwargs)


def test_layout_is_found_below_a_data_root_and_missing_parts_are_named(official):
    assert find_bdd100k_layout(official.parent, "val", ALL).base == official
    (official / "labels/lane/masks/val/a.png").unlink()
    for f in (official / "labels/lane/masks/val").iterdir():
        f.unlink()
    (official / "labels/lane/masks/val").rmdir()
    with pytest.raises(DatasetError, match=r"missing lane: .*labels/lane/masks/val"):
        find_bdd100k_layout(official, "val", ALL)
    assert find_bdd100k_layout(official, "val", ("det", "drivable")).lane is None
    with pytest.raises(DatasetError, match=r"no BDD100K layout under"):
        find_bdd100k_layout(official / "images", "val", ALL)
    with pytest.raises(ConfigError, match="choose among"):
        find_bdd100k_layout(official, "val", ("det", "seg"))
    item = bdd100k_items(find_bdd100k_layout(official, "val", ("det",)), ("det",))[0]
    with pytest.raises(ConfigError, match=r"unknown: seg"):
        load_bdd100k_sample(item, BddSpec(), ("seg",), 0)


# --------------------------------------------------------------------- bad input names the file
def test_unknown_category_names_the_file(official):
    frames = json.loads((official / "labels/det_20/det_val.json").read_text())
    frames[0]["labels"][0]["category"] = "tractor"
    (official / "labels/det_20/det_val.json").write_text(json.dumps(frames))
    with pytest.raises(DatasetError, match=r"det_val\.json: frame 'a\.jpg', label 0 has category 'tractor'"):
        load(official)


def test_malformed_json_names_the_file(official):
    truncate_file(official / "labels/det_20/det_val.json")
    with pytest.raises(DatasetError, match=r"det_val\.json is not valid JSON"):
        load(official)
    (official / "labels/det_20/det_val.json").write_text(json.dumps({"not": "frames"}))
    with pytest.raises(DatasetError, match=r"det_val\.json is not a list of Scalabel frames"):
        load(official)


@pytest.mark.parametrize(
    "box, match",
    [({"x1": 1, "y1": 1, "x2": 30, "y2": 3}, "outside its 16x8 image"), ({"x1": 5, "y1": 1, "x2": 2, "y2": 3}, "x2 < x1"),
     ({"x1": 1, "y1": 1, "x2": "7", "y2": 3}, "expected numbers")],
)  # fmt: skip
def test_bad_boxes_name_the_file(official, box, match):
    frames = json.loads((official / "labels/det_20/det_val.json").read_text())
    frames[0]["labels"][0]["box2d"] = box
    (official / "labels/det_20/det_val.json").write_text(json.dumps(frames))
    with pytest.raises(DatasetError, match=rf"det_val\.json.*{match}"):
        load(official, annotations=("det",))


def test_missing_image_names_the_json_and_the_image(official):
    (official / "images/100k/val/b.jpg").unlink()
    with pytest.raises(DatasetError, match=r"det_val\.json lists 'b', but its image .*b\.jpg does not exist"):
        load(official, annotations=("det",))


def test_wrong_size_and_out_of_range_masks_name_the_file(official):
    save_png(official / "labels/drivable/masks/val/a.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DatasetError, match=r"drivable/masks/val/a\.png is 16x9 \(WxH\) but its image"):
        load(official, annotations=("drivable",))
    bad = DRIVABLE.copy()
    bad[0, 0] = 3
    save_png(official / "labels/drivable/masks/val/a.png", bad)
    with pytest.raises(DatasetError, match=r"drivable mask .*a\.png holds value\(s\) \[3\]"):
        load(official, annotations=("drivable",))
    lanes = LANES.copy()
    lanes[1, 1] = 0b0100_0001  # a lane pixel (bit 3 clear) with bit 6 set
    save_png(official / "labels/lane/masks/val/b.png", lanes)
    with pytest.raises(DatasetError, match=r"lane mask .*b\.png holds value\(s\) \[65\]"):
        load(official, annotations=("lane",))
    save_png(official / "labels/lane/masks/val/b.png", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"mask .*lane/masks/val/b\.png is a RGB image"):
        load(official, annotations=("lane",))


# --------------------------------------------------------------------- re-packed layout
@pytest.fixture
def repacked(tmp_path):
    root = tmp_path / "bdd_repacked"
    save_image(root / "images/val/a.jpg", np.full((H, W, 3), 90, np.uint8))
    objects = [
        {"category": "person", "id": 0, "box2d": {"x1": 1, "y1": 1, "x2": 4, "y2": 6}, "attributes": {"occluded": True}},
        {"category": "motor", "id": 1, "box2d": {"x1": 6, "y1": 2, "x2": 9, "y2": 5}},
        {"category": "area/drivable", "id": 2, "poly2d": [[0, 4, "L"], [15, 4, "L"], [15, 7, "L"]]},
        {"category": "lane/single white", "id": 3, "poly2d": [[0, 7, "L"], [15, 0, "L"]]},
    ]  # fmt: skip
    det = root / "det_annotations/val/a.json"
    det.parent.mkdir(parents=True)
    det.write_text(json.dumps({"name": "a", "frames": [{"timestamp": 10000, "objects": objects}], "attributes": {}}))
    da = np.zeros((H, W), np.uint8)
    da[4:, :] = 255
    save_png(root / "da_seg_annotations/val/a.png", da)
    ll = np.zeros((H, W, 3), np.uint8)  # masks saved as RGB are read through their grey value
    ll[2, :] = 255
    save_png(root / "ll_seg_annotations/val/a.png", ll)
    return root


def test_repacked_layout_reads_the_per_image_json_and_binary_masks(repacked):
    spec = BddSpec(drivable="binary")
    layout = find_bdd100k_layout(repacked, "val", ALL)
    assert layout.kind == "repacked"
    s = load(repacked, spec)["a"]
    np.testing.assert_array_equal(s["det"]["boxes"], [[1, 1, 5, 7], [6, 2, 10, 6]])
    assert s["det"]["labels"].tolist() == [L("pedestrian"), L("motorcycle")]
    expected_da = np.zeros((H, W), np.uint8)
    expected_da[4:] = 1
    np.testing.assert_array_equal(s["drivable"], expected_da)
    expected_ll = np.zeros((H, W), np.uint8)
    expected_ll[2] = 1
    np.testing.assert_array_equal(s["lane"], expected_ll)
    wide = load(repacked, BddSpec(drivable="binary", lane_dilation=1), annotations=("lane",))["a"]["lane"]
    assert wide[1:4].all() and not wide[0].any()


def test_repacked_masks_refuse_per_class_readings(repacked):
    with pytest.raises(ConfigError, match="use drivable='binary'"):
        BddSpec().check_layout("repacked")
    with pytest.raises(ConfigError, match="use lane='binary'"):
        BddSpec(drivable="binary", lane="category").check_layout("repacked")
    BddSpec().check_layout("official")


def test_repacked_bad_json_names_the_file(repacked):
    (repacked / "det_annotations/val/a.json").write_text(json.dumps({"name": "a", "objects": []}))
    with pytest.raises(DatasetError, match=r"a\.json has no 'frames' list"):
        load(repacked, BddSpec(drivable="binary"))


# --------------------------------------------------------------------- the registered adapter
def test_registered_adapter_reads_the_tree_from_a_data_root(official):
    from multitask_edet.datasets import build_dataset

    ds = build_dataset("bdd100k", official.parent, "val", "det,drivable,lane", lane="category")
    assert len(ds) == 4 and ds.image_ids == [0, 1, 2, 3] and ds.layout.kind == "official"
    assert ds.class_names["det"] == list(BDD100K_DET_CLASSES) and ds.cat_ids == list(range(1, 11))
    assert ds.class_names["drivable"] == ["background", "direct", "alternative"]  # released masks: 3 classes
    assert ds.class_names["lane"][:2] == ["background", "crosswalk"]
    expected = load(official, BddSpec(lane="category"))
    for i, stem in enumerate("abcd"):
        s = ds.load_sample(i)
        assert s["file_name"].endswith(f"{stem}.jpg") and ds.file_name(i) == s["file_name"]
        for key in ("drivable", "lane"):
            assert (key in s) == (key in expected[stem])
            if key in s:
                np.testing.assert_array_equal(s[key], expected[stem][key])
    np.testing.assert_array_equal(ds.load_sample(0)["det"]["boxes"], expected["a"]["det"]["boxes"])


def test_box_gt_holds_the_images_with_a_det_frame_and_ignore_boxes_as_crowd(official):
    from multitask_edet.datasets import build_dataset

    gt = build_dataset("bdd100k", official, "val", "det").box_gt("det").dataset
    assert [im["id"] for im in gt["images"]] == [0, 1, 2]  # d.jpg has no det frame
    assert all((im["height"], im["width"]) == (H, W) for im in gt["images"])
    a = [ann for ann in gt["annotations"] if ann["image_id"] == 0]
    assert [ann["bbox"] for ann in a] == [[1, 2, 5, 5], [0.5, 0, 4, 8], [8, 1, 5, 4], [10, 0, 6, 8], [2, 2, 2, 2]]
    assert [ann["category_id"] for ann in a] == [L(c) + 1 for c in ("car", "pedestrian", "car", "traffic light",
                                                                     "bicycle")]
    assert [ann["iscrowd"] for ann in a] == [0, 0, 1, 1, 1] and a[0]["area"] == 25
    assert len(gt["annotations"]) == 5 and len(gt["categories"]) == 10


def test_class_map_preset_merges_into_one_vehicle_class(official):
    from multitask_edet.datasets import build_dataset

    ds = build_dataset("bdd100k", official, "val", "det", class_map="vehicle")
    assert ds.class_names["det"] == ["vehicle"] and ds.cat_ids == [1]
    det = ds.load_sample(0)["det"]  # car and the ignored "other vehicle" stay; pedestrian, light, bike go
    np.testing.assert_array_equal(det["boxes"], [[1, 2, 6, 7], [8, 1, 13, 5]])
    assert det["labels"].tolist() == [0, 0] and det["ignore"].tolist() == [False, True]
    assert [a["iscrowd"] for a in ds.box_gt().dataset["annotations"]] == [0, 1]
    with pytest.raises(ConfigError, match="named class maps are vehicle"):
        build_dataset("bdd100k", official, "val", "det", class_map="vehicles")


def test_adapter_options_on_the_repacked_layout(repacked, official):
    from multitask_edet.datasets import build_dataset

    ds = build_dataset("bdd100k", repacked, "val", "det,drivable,lane", lane_dilation=1)
    assert ds.layout.kind == "repacked" and ds.class_names["drivable"] == ["background", "drivable"]
    assert ds.load_sample(0)["lane"][1:4].all()
    with pytest.raises(ConfigError, match="use drivable='binary'"):
        build_dataset("bdd100k", repacked, "val", "drivable", drivable="classes")
    with pytest.raises(DatasetError, match="no BDD100K repacked layout"):
        build_dataset("bdd100k", official, "val", "det", layout="repacked")
    with pytest.raises(ConfigError, match="unknown option\\(s\\) lane_width; valid options: .*lane_dilation"):
        build_dataset("bdd100k", official, "val", "lane", lane_width=8)


def test_on_error_skip_in_samples_and_in_the_ground_truth(official):
    from multitask_edet.datasets import build_dataset

    (official / "images/100k/val/a.jpg").unlink()
    with pytest.raises(DatasetError, match=r"a\.jpg does not exist"):
        build_dataset("bdd100k", official, "val", "det").box_gt()
    ds = build_dataset("bdd100k", official, "val", "det", on_error="skip")
    assert ds[0]["file_name"].endswith("b.jpg") and ds.skipped[0]["file"].endswith("a.jpg")
    assert [im["id"] for im in ds.box_gt().dataset["images"]] == [1, 2]  # a.jpg left out of the evaluation too
