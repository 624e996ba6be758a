import numpy as np
import pytest

from multitask_edet.datasets import build_dataset
from multitask_edet.datasets.io import save_palette_png
from multitask_edet.datasets.testing import H, W, save_image, truncate_file, write_voc_tree
from multitask_edet.datasets.voc import VOC_CLASSES
from multitask_edet.errors import ConfigError, DatasetError

L = VOC_CLASSES.index


def test_det_split_boxes_are_0_based_and_border_boxes_reach_the_edge(voc_tree):
    ds = build_dataset("voc2012", voc_tree.root, "train")
    assert len(ds) == 4 and ds.image_ids == [0, 1, 2, 3]
    assert ds.class_names["det"] == list(VOC_CLASSES) and ds.cat_ids == list(range(1, 21))
    s = ds.load_sample(0)
    # XML (1,1,32,24) and (41,11,64,48) on a 64x48 image
    np.testing.assert_array_equal(s["det"]["boxes"], [[0, 0, 32, 24], [40, 10, 64, 48]])
    assert s["det"]["boxes"].dtype == np.float32
    assert s["det"]["labels"].tolist() == [L("dog"), L("person")]
    assert "seg" not in s and s["dataset"] == "voc2012"


@pytest.mark.parametrize(
    "mode, labels, ignore", [("ignore", ["car", "bottle"], [False, True]), ("drop", ["car"], [False]),
                             ("keep", ["car", "bottle"], [False, False])]
)  # fmt: skip
def test_difficult_modes(voc_tree, mode, labels, ignore):
    s = build_dataset("voc2012", voc_tree.root, "train", difficult=mode).load_sample(1)
    assert s["det"]["labels"].tolist() == [L(n) for n in labels]
    assert s["det"]["ignore"].tolist() == ignore


def test_box_gt_marks_difficult_as_crowd_and_ignore(voc_tree):
    gt = build_dataset("voc2012", voc_tree.root, "train").box_gt()
    assert sorted(gt.getImgIds()) == [0, 1, 2, 3]
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[1]))
    assert [a["category_id"] for a in anns] == [L("car") + 1, L("bottle") + 1]
    assert [(a["iscrowd"], a["ignore"]) for a in anns] == [(0, 0), (1, 1)]
    assert anns[0]["bbox"] == [8.0, 8.0, 32.0, 22.0]
    assert gt.imgs[0]["height"] == H and gt.imgs[0]["width"] == W


def test_seg_split_reads_palette_indices_and_joint_samples(voc_tree):
    ds = build_dataset("voc2012", voc_tree.root, "train", ("seg",))
    assert len(ds) == 3
    s = ds.load_sample(0)
    assert "det" not in s
    np.testing.assert_array_equal(s["seg"], voc_tree.masks["2012_000001"])
    assert (s["seg"] == 255).any()
    joint = build_dataset("voc2012", voc_tree.root, "val", "det,seg")
    s = joint.load_sample(0)
    np.testing.assert_array_equal(s["seg"], voc_tree.masks["2012_000004"])
    assert s["det"]["labels"].tolist() == [L("horse"), L("person")]


def test_joint_image_without_xml_has_only_a_mask(voc_tree):
    (voc_tree.voc_dir / "Annotations" / "2012_000002.xml").unlink()
    ds = build_dataset("voc2012", voc_tree.root, "train", ("det", "seg"))
    s = ds.load_sample(1)
    assert "seg" in s and "det" not in s
    assert sorted(ds.box_gt().getImgIds()) == [0, 2]


@pytest.mark.parametrize("fmt", ["mat", "aug"])
def test_train_aug_is_voc_train_plus_sbd_minus_voc_val(voc_tree, request, fmt):
    sbd = request.getfixturevalue(f"sbd_{fmt}")
    ds = build_dataset("voc2012", voc_tree.root, "train_aug", ("seg",))
    ids = [it.id for it in ds.items]
    assert ids == sbd.train_aug == ["2012_000001", "2012_000002", "2012_000003", "2012_000007", "2012_000008"]
    # an image with an official VOC mask uses it (with its 255 outline); SBD-only ids use SBD's
    np.testing.assert_array_equal(ds.load_sample(0)["seg"], voc_tree.masks["2012_000001"])
    s7 = ds.load_sample(3)
    np.testing.assert_array_equal(s7["seg"], sbd.masks["2012_000007"])
    assert s7["file_name"].endswith("SBD/img/2012_000007.jpg")
    assert ds.items[3].mask.suffix == (".mat" if fmt == "mat" else ".png")


def test_train_aug_without_sbd_says_what_is_missing(voc_tree):
    with pytest.raises(DatasetError, match="train_aug' needs SBD.*sbd_root"):
        build_dataset("voc2012", voc_tree.root, "train_aug", ("seg",))
    with pytest.raises(ConfigError, match="segmentation split"):
        build_dataset("voc2012", voc_tree.root, "train_aug", ("det",))


def test_voc2007_and_0712(tmp_path):
    write_voc_tree(tmp_path, "2007")
    write_voc_tree(tmp_path, "2012")
    assert len(build_dataset("voc2007", tmp_path, "test")) == 2
    tv = build_dataset("voc0712", tmp_path, "trainval")
    assert len(tv) == 12 and tv.name == "voc0712"
    assert [it.id[:4] for it in tv.items] == ["2007"] * 6 + ["2012"] * 6
    assert sorted(tv.box_gt().getImgIds()) == list(range(12))
    test = build_dataset("voc0712", tmp_path, "test")
    assert [it.id for it in test.items] == ["2007_000004", "2007_000005"]
    with pytest.raises(ConfigError, match="detection dataset"):
        build_dataset("voc0712", tmp_path, "trainval", ("seg",))


def test_drop_empty_detection(voc_tree):
    # an image whose only object is difficult has no usable box
    xml = voc_tree.voc_dir / "Annotations" / "2012_000003.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>"))
    ds = build_dataset("voc2012", voc_tree.root, "train", drop_empty=True)
    assert [it.id for it in ds.items] == ["2012_000001", "2012_000002", "2012_000006"]


# ----------------------------------------------------------------- bad input
def test_missing_root_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetError, match="VOC2012 not found: looked in .*VOCdevkit/VOC2012.*MTEDET_DATA"):
        build_dataset("voc2012", tmp_path, "train")


def test_missing_split_list_lists_available(voc_tree):
    with pytest.raises(DatasetError, match=r"Main/test.txt does not exist.*\['train', 'trainval', 'val'\]"):
        build_dataset("voc2012", voc_tree.root, "test")


def test_split_list_naming_missing_image(voc_tree):
    (voc_tree.voc_dir / "JPEGImages" / "2012_000003.jpg").unlink()
    ds = build_dataset("voc2012", voc_tree.root, "train", ("seg",))
    with pytest.raises(DatasetError, match=r"Segmentation/train.txt names image '2012_000003'.*does not exist"):
        ds.load_sample(2)


def test_mask_value_out_of_range_names_file(voc_tree):
    m = voc_tree.masks["2012_000002"].copy()
    m[0, 0] = 30
    save_palette_png(m, voc_tree.voc_dir / "SegmentationClass" / "2012_000002.png")
    ds = build_dataset("voc2012", voc_tree.root, "train", ("seg",))
    with pytest.raises(DatasetError, match=r"2012_000002.png holds value\(s\) \[30\] outside the class ids 0..20"):
        ds.load_sample(1)


def test_mask_size_mismatch_names_both_files(voc_tree):
    save_palette_png(np.zeros((H, W + 2), np.uint8), voc_tree.voc_dir / "SegmentationClass" / "2012_000002.png")
    with pytest.raises(DatasetError, match="2012_000002.png is 66x48.*image .*2012_000002.jpg is 64x48"):
        build_dataset("voc2012", voc_tree.root, "train", ("seg",)).load_sample(1)


def test_rgb_mask_is_refused(voc_tree):
    save_image(voc_tree.voc_dir / "SegmentationClass" / "2012_000002.png", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(DatasetError, match="2012_000002.png is a RGB image"):
        build_dataset("voc2012", voc_tree.root, "train", ("seg",)).load_sample(1)


def test_bad_xml_and_box_outside_image_name_file(voc_tree):
    truncate_file(voc_tree.voc_dir / "Annotations" / "2012_000002.xml")
    xml3 = voc_tree.voc_dir / "Annotations" / "2012_000003.xml"
    xml3.write_text(xml3.read_text().replace("<xmax>50</xmax>", "<xmax>80</xmax>"))
    xml6 = voc_tree.voc_dir / "Annotations" / "2012_000006.xml"
    xml6.write_text(xml6.read_text().replace("<name>bus</name>", "<name>spaceship</name>"))
    ds = build_dataset("voc2012", voc_tree.root, "train")
    with pytest.raises(DatasetError, match="2012_000002.xml is not valid XML"):
        ds.load_sample(1)
    with pytest.raises(DatasetError, match=r"2012_000003.xml: cat box .*\(11, 6, 80, 45\) lies outside its 64x48"):
        ds.load_sample(2)
    with pytest.raises(DatasetError, match="2012_000006.xml: object 0 has class 'spaceship'"):
        ds.load_sample(3)
    ds.load_sample(0)


def test_sbd_mat_without_gtcls(voc_tree, sbd_mat):
    import scipy.io

    scipy.io.savemat(sbd_mat.sbd_dir / "cls" / "2012_000007.mat", {"other": np.zeros((2, 2))})
    ds = build_dataset("voc2012", voc_tree.root, "train_aug", ("seg",))
    with pytest.raises(DatasetError, match="2012_000007.mat has no GTcls.Segmentation"):
        ds.load_sample(3)
